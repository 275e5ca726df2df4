"""Few-step SIGMAS and a few-step SAMPLER for ComfyUI's native custom sampling (SamplerCustomAdvanced).

SIGMAS are Salt's warped few-step grids (salt_core.schedules); the SAMPLER wraps salt_core's
k-diffusion-contract samplers in one KSAMPLER, so it drives a native Wan MODEL with no copy of it.
"""
import functools

import torch

from ..salt_core.samplers import sample_fewstep_deterministic, sample_fewstep_stochastic
from ..salt_core.schedules import INFERENCE_GRID_RAW, MAX_NFE, TRAINING_GRID_RAW, get_sigmas_warped, raw_step_list
from ..salt_core.config import TOY_SHIFT
from ..salt_core.validate import check_choice, check_finite_tensor, check_number, check_sigmas, quote
from .bridge import io
from .bridge.convert import ksampler

# Raw (un-shifted, 0..1000) timestep lists of the named presets; "uniform" uses `nfe`, "custom" the text.
SIGMA_PRESETS = {
    "uniform": None,
    "self_forcing_4step": INFERENCE_GRID_RAW,     # [1000, 750, 500, 250]
    "2step": [1000.0, 500.0],
    "training_8step": TRAINING_GRID_RAW,          # [1000, 875, ..., 125]
    "custom": None,
}
NON_FINITE_FIX = ("the model computed NaN/Inf: check the LoRA strengths (LoraLoaderModelOnly's strength must be a "
                  "finite number) and that the checkpoint's weights are finite; lower cfg if guidance is very high")


def finite_result(sample_fn):
    """`sample_fn` (k-diffusion contract) whose result must be finite: a NaN LoRA strength or broken weights end in
    an error naming the likely causes, never in a 'successful' NaN video."""
    @functools.wraps(sample_fn)
    def sample(model, x, sigmas, *args, **kwargs):
        out = sample_fn(model, x, sigmas, *args, **kwargs)
        check_finite_tensor("the sampled latent", out, where="SaltFewStepSampler", fix=NON_FINITE_FIX)
        return out
    return sample


SAMPLERS = {"stochastic": finite_result(sample_fewstep_stochastic),
            "deterministic": finite_result(sample_fewstep_deterministic)}


def parse_raw_steps(text: str) -> list:
    """'1000, 750, 500, 250' → [1000.0, 750.0, 500.0, 250.0] (commas or spaces; in brackets, as the node's own
    description writes them, and with the final 0 of a whole schedule, which the levels end with anyway), with a
    node-level error."""
    try:
        body = text.strip()
        if body[:1] + body[-1:] in ("[]", "()"):   # one matching pair of brackets
            body = body[1:-1]
        steps = [float(s) for s in body.replace(",", " ").split()]
    except ValueError:
        steps = None
    if steps and len(steps) > 1 and steps[-1] == 0:
        steps = steps[:-1]
    if not steps:
        raise ValueError(f"SaltFewStepSigmas: custom_steps={quote(text)} is not a list of numbers; expected raw "
                         f"timesteps in (0, 1000], strictly decreasing (a final 0 may end them), e.g. "
                         f"'1000, 750, 500, 250'")
    return steps


def fewstep_sigmas(preset: str, nfe: int, shift: float, custom_steps: str = "") -> torch.Tensor:
    """SIGMAS (K+1,) float32 ending at 0 for a preset (or `nfe` uniform steps, or a custom raw list)."""
    check_choice("preset", preset, SIGMA_PRESETS, where="SaltFewStepSigmas")
    check_number("shift", shift, where="SaltFewStepSigmas", low=0, low_open=True,
                 fix=f"Wan uses 5.0, the toy world {TOY_SHIFT:g}")
    if preset == "uniform":
        if not 1 <= nfe <= MAX_NFE:
            raise ValueError(f"SaltFewStepSigmas: nfe={nfe}; expected 1..{MAX_NFE} (few-step students); for more "
                             f"steps use ComfyUI's BasicScheduler")
        raw = raw_step_list(nfe)
    elif preset == "custom":
        raw = parse_raw_steps(custom_steps)
    else:
        raw = SIGMA_PRESETS[preset]
    try:
        sigmas = get_sigmas_warped(raw, shift).float()
    except ValueError as e:
        raise ValueError(f"SaltFewStepSigmas: {e}") from e
    try:   # again in float32, the SIGMAS' dtype: levels closer than its precision merge, a tiny shift overflows
        check_sigmas(sigmas, where="SaltFewStepSigmas", name=f"the noise levels in float32 (shift={shift:g})")
    except ValueError as e:
        raise ValueError(f"{e}. Raw steps {quote(raw)} at shift {shift:g} give levels too close together (or "
                         f"not finite) in float32: space the custom steps further apart or use a shift nearer "
                         f"Wan's 5.0") from None
    return sigmas


class SaltFewStepSigmas(io.ComfyNode):
    """Few-step noise levels (SIGMAS) on Salt's warped grids: σ = shift(t/1000) for raw steps t, then 0."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltFewStepSigmas",
            display_name="Salt Few-Step Sigmas",
            category="Salt/sampling",
            description="Noise levels for few-step students: a raw timestep list (0..1000) warped by the flow "
                        "shift σ' = sσ/(1+(s-1)σ), ending at 0. self_forcing_4step = [1000, 750, 500, 250]; "
                        "at shift 5 → σ = [1, 0.9375, 0.8333, 0.625, 0].",
            inputs=[
                io.Combo.Input("preset", options=list(SIGMA_PRESETS), default="self_forcing_4step",
                               tooltip="uniform: `nfe` evenly spaced raw steps; self_forcing_4step: [1000, 750, 500, "
                                       "250]; 2step: [1000, 500]; training_8step: the 8-step training grid; custom: "
                                       "the list in custom_steps."),
                io.Int.Input("nfe", default=4, min=1, max=MAX_NFE,
                             tooltip="Denoising steps (network evaluations) per chunk, used by the 'uniform' preset."),
                io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1,
                               tooltip=f"Flow timestep shift s (Wan 2.1: 5.0; the toy world: {TOY_SHIFT:g})."),
                io.String.Input("custom_steps", default="", optional=True, placeholder="1000, 750, 500, 250",
                                tooltip="Raw timesteps in (0, 1000], strictly decreasing (the final 0 optional); used by the "
                                        "'custom' preset."),
            ],
            outputs=[io.Sigmas.Output(tooltip="1-D noise levels ending at 0, for SaltStreamingSampler or "
                                              "SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, preset, nfe, shift, custom_steps="") -> io.NodeOutput:
        return io.NodeOutput(fewstep_sigmas(preset, nfe, shift, custom_steps))


class SaltFewStepSampler(io.ComfyNode):
    """A few-step SAMPLER for native models: predict x0, then re-noise (stochastic) or take an Euler step."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltFewStepSampler",
            display_name="Salt Few-Step Sampler",
            category="Salt/sampling",
            description="Few-step sampler for SamplerCustomAdvanced on a native (bidirectional) Wan MODEL. "
                        "stochastic: predict x0 and re-noise it with fresh noise to the next level (Self Forcing / "
                        "DMD students); deterministic: re-use the predicted noise (an Euler step).",
            inputs=[
                io.Combo.Input("mode", options=list(SAMPLERS), default="stochastic",
                               tooltip="stochastic: fresh noise each step (seeded from the noise seed), what DMD "
                                       "students are trained for; deterministic: Euler / DDIM-like update."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, mode) -> io.NodeOutput:
        check_choice("mode", mode, SAMPLERS, where="SaltFewStepSampler")
        return io.NodeOutput(ksampler(SAMPLERS[mode]))

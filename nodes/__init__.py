"""Salt's ComfyUI nodes (V3 API): few-step SIGMAS / SAMPLER, causal model loaders, KV-cached streaming, toy world,
distillation in the queue and a metrics report.

Nodes are thin and stateless; the work lives in salt_core (math), weights (files) and training (jobs). Only the
`bridge/` package imports ComfyUI. Node ids never change once shipped.

| node id | inputs → output |
|---|---|
| SaltFewStepSigmas | preset, nfe, shift, custom_steps → SIGMAS |
| SaltFewStepSampler | mode → SAMPLER (for SamplerCustomAdvanced on a native Wan MODEL) |
| SaltCacheOptions | chunk_frames, attention, window/sink/max frames, relative_rope, context_noise → SALT_CACHE_OPTIONS |
| SaltLoadCausalModel | ckpt_name (models/diffusion_models), use_ema, dtype, weight_dtype → SALT_MODEL |
| SaltCausalFromModel | MODEL (native Wan) → SALT_MODEL sharing its weights |
| SaltStreamingSampler | SALT_MODEL, positive, cache options, SIGMAS, seed, chunks, size, ... → LATENT |
| SaltToyModel | asset → SALT_MODEL (a shipped toy model: the Salt student by default, or the teacher) |
| SaltToyTextEncode | text → CONDITIONING (toy text encoder) |
| SaltToyDecode | LATENT (toy pixels), upscale → IMAGE |
| SaltDistill | preset, teacher / student_init / critic_init, gen_steps, batch_size, seed, name, overrides (+ clip) → SALT_MODEL, STRING (export path) |
| SaltExtractLoRA | base, student SALT_MODELs, rank, include_diffs, dtype, name → STRING (report; writes loras/salt/) |
| SaltSemigroupDefect | SALT_MODEL, prompts, nfe, grid_steps, seed (+ positive, latent for Wan) → STRING (report) |
| SaltLiveStream | SALT_MODEL, positive, cache options, SIGMAS, seed, size, max_chunks, stream_id (+ vae, clip) → IMAGE, LATENT; pushes each chunk's frames live |
"""
from .bridge import ComfyExtension
from .bridge.server import add_routes
from .distill import SaltDistill
from .live import SaltLiveStream, control_request
from .lora import SaltExtractLoRA
from .metrics import SaltSemigroupDefect
from .models import SaltCausalFromModel, SaltLoadCausalModel
from .sampling import SaltFewStepSampler, SaltFewStepSigmas
from .streaming import SaltCacheOptions, SaltStreamingSampler
from .toy import SaltToyDecode, SaltToyModel, SaltToyTextEncode

NODES = [SaltFewStepSigmas, SaltFewStepSampler, SaltCacheOptions, SaltLoadCausalModel, SaltCausalFromModel,
         SaltStreamingSampler, SaltToyModel, SaltToyTextEncode, SaltToyDecode, SaltDistill, SaltExtractLoRA, SaltSemigroupDefect,
         SaltLiveStream]


class SaltExtension(ComfyExtension):
    """The pack's node list for ComfyUI."""

    async def get_node_list(self) -> list:
        return list(NODES)


async def comfy_entrypoint() -> SaltExtension:
    """ComfyUI's V3 entry point (called once at startup): the nodes, and the live stream's control routes."""
    add_routes("/salt/live", control_request)
    return SaltExtension()

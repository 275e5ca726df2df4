"""salt_core: the Wan 2.1 backbone, KV caches, schedules, samplers, streaming, losses, metrics and the seed convention.

Knows nothing of ComfyUI, files or training loops. The stable public API (README "Python API"):

    build_model(preset_or_config, dtype, device, seed) -> WanModel
    to_wan_state_dict(obj) -> (state_dict, layout); from_wan_state_dict(sd, layout) -> obj
    adopt_weights(model, sd)                       # zero-copy: parameters become the given tensors
    get_sigmas_fewstep(nfe, shift) / get_sigmas_warped(raw_steps, shift)
    FlowDenoiser(model, context, ...)              # velocity model -> k-diffusion denoiser
    sample_fewstep_stochastic / sample_fewstep_deterministic(model, x, sigmas, ...)
    CachePolicy.full / .rolling / .sink; rollout_stream(...) / stream_video(...)
    ChunkStream(model, cache, context, ...)        # one chunk per step(); set_prompt, write, state / from_state
    extract_lora(base_sd, student_sd, rank) -> (lora_sd, reports); apply_lora(sd, lora_sd)   # ComfyUI LoRA keys
    seeded_noise(seed, shape, device, dtype) -> (noise, generator)   # the one seed convention: a seed, a clip
"""
from .config import MODEL_PRESETS, WanConfig, get_config
from .denoiser import FlowDenoiser
from .kv_cache import CachePolicy, KVCache
from .layouts import (LAYOUTS, LayoutError, adopt_weights, detect_layout, from_wan_state_dict, load_into,
                      to_wan_state_dict)
from .lora import apply_lora, extract_lora
from .model import BlockCausal, WanModel, build_model
from .samplers import sample_euler, sample_fewstep_deterministic, sample_fewstep_stochastic
from .schedules import get_sigmas_fewstep, get_sigmas_uniform, get_sigmas_warped, shift_sigma
from .seeding import seeded_noise
from .streaming import ChunkStream, rollout_stream, stream_video

PRESETS = MODEL_PRESETS   # the 0.x name of MODEL_PRESETS, kept for existing imports

__all__ = [
    "MODEL_PRESETS", "PRESETS", "WanConfig", "get_config", "FlowDenoiser", "CachePolicy", "KVCache", "LAYOUTS",
    "LayoutError",
    "adopt_weights", "detect_layout", "from_wan_state_dict", "load_into", "to_wan_state_dict", "BlockCausal",
    "WanModel", "build_model", "sample_euler", "sample_fewstep_deterministic", "sample_fewstep_stochastic",
    "get_sigmas_fewstep", "get_sigmas_uniform", "get_sigmas_warped", "shift_sigma", "ChunkStream", "rollout_stream",
    "stream_video",
    "extract_lora", "apply_lora", "seeded_noise",
]

"""One seed, one clip: the pack's seed convention (salt_core.seeding) is the one the streaming node, stream_video,
sample_student and the evaluations use, so the same seed and settings give the same clip on each path."""
import pytest
import torch

from comfyui_salt.salt_core import CachePolicy, get_sigmas_fewstep, stream_video
from comfyui_salt.salt_core.seeding import seeded_noise
from comfyui_salt.toy.shipped import load_toy_student
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distill_eval import sample_student

CAPTION = "a red disc moving left on a dark background"


def test_seeded_noise_is_the_seeds_first_draw_and_its_generator_continues_the_stream():
    noise, gen = seeded_noise(11, (2, 3, 6, 4, 4), dtype=torch.float64)
    fresh = torch.Generator().manual_seed(11)
    first = torch.randn(2, 3, 6, 4, 4, generator=fresh)              # drawn in float32, then cast
    assert noise.dtype == torch.float64 and torch.equal(noise, first.double())
    assert gen.device.type == "cpu"
    assert torch.equal(torch.randn(5, generator=gen), torch.randn(5, generator=fresh))   # re-noise: the next draws


def test_seeded_noise_takes_comfyuis_whole_seed_range_and_refuses_what_is_not_a_seed_or_a_size():
    seeded_noise(0xffffffffffffffff, (1, 1))
    for seed in (-1, 1.5, True, 2 ** 64):
        with pytest.raises(ValueError, match="seed"):
            seeded_noise(seed, (1, 1))
    with pytest.raises(ValueError, match=r"shape\[1\]"):
        seeded_noise(0, (1, 0, 2))


@pytest.fixture(scope="module")
def shipped():
    model, _ = load_toy_student()
    cfg = get_preset("toy-salt")     # the shipped student's settings: causal, chunks of 3, full attention, shift 3
    context = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len).encode([CAPTION, CAPTION])
    return model, cfg, context


@pytest.mark.parametrize("seed", [0, 123456789])
def test_sample_student_and_stream_video_give_the_same_clip_for_a_seed(shipped, seed):
    model, cfg, context = shipped
    a = sample_student(model, cfg, context, 4, seed=seed)
    shape = (2, model.cfg.in_dim, cfg.num_frames, cfg.height, cfg.width)
    noise, gen = seeded_noise(seed, shape)
    with torch.no_grad():
        b = stream_video(model, noise, context, get_sigmas_fewstep(4, cfg.shift), chunk_frames=cfg.chunk_frames,
                         policy=CachePolicy.full(cfg.num_frames), generator=gen)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_student(model, cfg, context, 4, seed=seed + 1))   # the seed matters


def test_the_streaming_node_gives_sample_students_clip_for_a_seed(shipped, salt_nodes):
    from comfyui_salt.nodes.types import SaltModel
    model, cfg, context = shipped
    options = salt_nodes.SaltCacheOptions.execute(chunk_frames=cfg.chunk_frames, attention="full", window_frames=6,
                                                  sink_frames=3, relative_rope=False, context_noise=0.0,
                                                  max_frames=cfg.num_frames).args[0]
    positive = salt_nodes.SaltToyTextEncode.execute(text=CAPTION).args[0]
    sigmas = get_sigmas_fewstep(4, cfg.shift)   # the same values: float32-rounded sigmas move the clip by ~1e-4
    with torch.inference_mode():
        latent = salt_nodes.SaltStreamingSampler.execute(
            model=SaltModel(model, "pixels", "shipped toy student", causal=True), positive=positive,
            cache_options=options, sigmas=sigmas, seed=42, num_chunks=cfg.num_frames // cfg.chunk_frames,
            width=cfg.width, height=cfg.height, batch_size=2, sampling="stochastic", cfg=1.0).args[0]
    want = sample_student(model, cfg, context, 4, seed=42)
    assert latent["samples"].shape == want.shape
    assert torch.equal(latent["samples"], want)

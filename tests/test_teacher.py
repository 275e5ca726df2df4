"""Toy teacher job: teacher-forcing training matches cached inference; resume is bit-identical."""
import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.scorenet import teacher_forcing_mask
from comfyui_salt.toy.jobs import teacher_world
from comfyui_salt.training.teacher import TeacherConfig, train_teacher
from helpers import assert_close


def test_teacher_forcing_forward_equals_kv_cached_inference_on_clean_context():
    model = build_model("toy", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 12, 16, 16, generator=g)
    noisy = torch.randn(2, 3, 12, 16, 16, generator=g)
    ctx = torch.randn(2, 8, 32, generator=g)
    t_noisy = torch.rand(2, 4, generator=g).repeat_interleave(3, 1) * 1000
    mask = teacher_forcing_mask(12, 3, 16)
    t = torch.cat([torch.zeros(2, 9), t_noisy], 1)
    pos = torch.cat([torch.arange(9), torch.arange(12)])
    with torch.no_grad():
        tf = model(torch.cat([clean[:, :, :9], noisy], 2), t, ctx, attn_mask=mask, frame_positions=pos)[:, :, 9:]
        cache = model.new_cache(2, CachePolicy.full(12), (16, 16))
        outs = []
        for f0 in range(0, 12, 3):
            outs.append(model(noisy[:, :, f0:f0 + 3], t_noisy[:, f0:f0 + 3], ctx, cache=cache, start_frame=f0))
            model(clean[:, :, f0:f0 + 3], torch.zeros(2, 3), ctx, cache=cache, start_frame=f0)  # context pass
    assert_close(tf, torch.cat(outs, 2), 1e-5)


def test_teacher_training_resumed_after_interruption_ends_bit_identical(tmp_path):
    cfg = TeacherConfig(batch_size=2, threads=1, checkpoint_every=2, total_steps=5, log_every=1)
    train_teacher(cfg, str(tmp_path / "a"), max_steps=3, quiet=True,
                  world=teacher_world(cfg))   # "interrupted" after step 3
    resumed = train_teacher(cfg, str(tmp_path / "a"), quiet=True, world=teacher_world(cfg))
    straight = train_teacher(cfg, str(tmp_path / "b"), quiet=True, world=teacher_world(cfg))
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5


@pytest.mark.parametrize("world, frames", [("default", 12), ("lab:default", 12)])
def test_a_teacher_forcing_chunk_that_does_not_divide_the_worlds_clips_is_refused_before_the_run(tmp_path, world,
                                                                                                  frames):
    cfg = TeacherConfig(world=world, mode="teacher_forcing", chunk_frames=5, total_steps=1, threads=1)
    assert teacher_world(cfg).cfg.num_frames == frames
    with pytest.raises(ValueError, match=rf"chunk_frames=5 with mode=teacher_forcing; the world '{world}' has clips "
                                         rf"of {frames} frames.*divides {frames} \(1, 2, 3, 4, 6, 12\)"):
        train_teacher(cfg, str(tmp_path / "run"), quiet=True, world=teacher_world(cfg))
    assert not (tmp_path / "run").exists()
    bidirectional = TeacherConfig(world=world, mode="bidirectional", chunk_frames=5, total_steps=1, threads=1,
                                  batch_size=1, checkpoint_every=1)
    train_teacher(bidirectional, str(tmp_path / "whole"), quiet=True, world=teacher_world(bidirectional))


def test_the_teacher_sampler_returns_its_ode_trajectory_on_request():
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.salt_core.schedules import shift_sigma
    from comfyui_salt.toy.world import TOY_SHIFT
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.training.teacher import sample_teacher
    model = build_model("toy", seed=0).eval()
    world = get_world("default").cfg
    caps = ["a red disc moving left on a dark background"]
    out, traj = sample_teacher(model, "teacher_forcing", caps, ToyTextEncoder(), world, steps=4, return_trajectory=True)
    again = sample_teacher(model, "teacher_forcing", caps, ToyTextEncoder(), world, steps=4)
    assert torch.equal(out, again) and len(traj) == 4 * 4          # 4 chunks × 4 steps
    chunk, sigma, x, x0 = traj[-1]
    assert chunk == 3 and torch.equal(x0, out[:, :, 9:])
    assert sigma == pytest.approx(float(shift_sigma(torch.tensor(0.25, dtype=torch.float64), TOY_SHIFT)))  # last level


def test_teacher_warm_start_continues_from_shipped_weights_at_a_given_step(tmp_path):
    from comfyui_salt.training.teacher import export_teacher
    cfg = TeacherConfig(batch_size=2, threads=1, checkpoint_every=2, total_steps=6, log_every=1)
    train_teacher(cfg, str(tmp_path / "a"), max_steps=2, quiet=True, world=teacher_world(cfg))
    export_teacher(str(tmp_path / "a"), str(tmp_path / "w.safetensors"), weights="raw")
    warm = TeacherConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "w.safetensors"), "init_step": 2})
    model = train_teacher(warm, str(tmp_path / "b"), max_steps=2, quiet=True,
                          world=teacher_world(warm))   # nothing left to train
    from comfyui_salt.weights.files import load_model
    shipped, _ = load_model(str(tmp_path / "w.safetensors"))
    for (k, a), b in zip(model.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(a, b), k
    train_teacher(warm, str(tmp_path / "b"), max_steps=4, quiet=True, world=teacher_world(warm))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["step"] for x in lines] == [3, 4]
    # a folder recorded before the warm-start refusals (a step without init_from, ignored then) still exports
    config = tmp_path / "a" / "config.json"
    config.write_text(config.read_text().replace('"init_step": 0', '"init_step": 5'))
    assert "init_step\": 5" in config.read_text()
    assert "wrote" in export_teacher(str(tmp_path / "a"), str(tmp_path / "old.safetensors"), weights="raw")


def test_the_teacher_job_draws_lab_world_batches_with_decodable_captions():
    from comfyui_salt.salt_core.config import get_config
    from comfyui_salt.toy.lab import LabWorld
    from comfyui_salt.training.optim import step_generators
    world_cfg, encoder, draw, eval_captions = teacher_world(TeacherConfig(world="lab:tiny", model_preset="toy"))
    videos, captions = draw(step_generators(0, 0, 5)[1], 4)
    again, _ = draw(step_generators(0, 0, 5)[1], 4)
    assert videos.shape == (4, 3, world_cfg.num_frames, world_cfg.height, world_cfg.width)
    assert torch.equal(videos, again)                               # reproducible from the step seed
    assert LabWorld("tiny").decode(encoder.encode(captions)).tolist() == captions
    assert eval_captions(3) == [0, 1, 0]


@pytest.mark.parametrize("kind", ["bidirectional", "teacher_forcing"])
def test_a_features_only_forward_stops_after_its_block_with_the_same_features_and_gradient(kind):
    """The alignment reads the tokens after one block: a features-only forward runs the blocks up to it and not the
    rest or the head, and gives the full forward's features and their gradient exactly."""
    from comfyui_salt.salt_core.scorenet import ScoreNet
    model = build_model("toy", seed=0)
    net = ScoreNet(model, kind, chunk_frames=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.cfg.in_dim, 6, 16, 16, generator=g, requires_grad=True)
    clean, ctx, sigma = torch.randn(x.shape, generator=g), torch.randn(2, 8, model.cfg.text_dim, generator=g), \
        torch.tensor([0.3, 0.8])
    ran = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(model.blocks)]
    try:
        v, full = net.velocity(x, sigma, ctx, clean, features_at=1)
        (full_grad,) = torch.autograd.grad(full.square().sum(), x)
        ran.clear()
        none, only = net.velocity(x, sigma, ctx, clean, features_at=1, features_only=True)
        (only_grad,) = torch.autograd.grad(only.square().sum(), x)
    finally:
        for h in hooks:
            h.remove()
    assert none is None and v is not None and ran == [0, 1]
    assert torch.equal(only, full) and torch.equal(only_grad, full_grad)


def test_teacher_export_falls_back_to_the_copy_a_cut_save_left_when_the_newest_does_not_read(tmp_path):
    """A save of step N cut after its second rename leaves step_N.old beside step_N; where step_N then does not read
    (a truncated file), the export reads the .old copy, as a resumed run does, instead of failing."""
    import shutil
    from comfyui_salt.training.teacher import export_teacher
    from comfyui_salt.weights.files import load_model
    cfg = TeacherConfig(batch_size=2, threads=1, checkpoint_every=2, total_steps=6, log_every=1)
    train_teacher(cfg, str(tmp_path / "a"), max_steps=2, quiet=True, world=teacher_world(cfg))
    export_teacher(str(tmp_path / "a"), str(tmp_path / "whole.safetensors"), weights="raw")
    step = tmp_path / "a" / "checkpoints" / "step_00000002"
    shutil.copytree(step, str(step) + ".old")
    data = (step / "model.safetensors").read_bytes()
    (step / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "wrote" in export_teacher(str(tmp_path / "a"), str(tmp_path / "fallback.safetensors"), weights="raw")
    whole, _ = load_model(str(tmp_path / "whole.safetensors"))
    fallback, _ = load_model(str(tmp_path / "fallback.safetensors"))
    for (k, a), b in zip(whole.state_dict().items(), fallback.state_dict().values()):
        assert torch.equal(a, b), k
    assert sorted(p.name for p in step.parent.iterdir()) == ["step_00000002", "step_00000002.old"]   # read only


def test_teacher_export_refuses_a_newest_step_that_does_not_read_and_moves_nothing(tmp_path, monkeypatch):
    """Export used the resume's fallback: a newest step that failed to read once (a file held by another program,
    a damaged copy) was renamed .unreadable and an older teacher written with a warning; the next resume then lost
    those steps. Now the export names the file and the fix and leaves the folder as it was."""
    from comfyui_salt.training import runs
    from comfyui_salt.training.teacher import export_teacher
    cfg = TeacherConfig(batch_size=2, threads=1, checkpoint_every=2, total_steps=6, log_every=1)
    train_teacher(cfg, str(tmp_path / "a"), max_steps=4, quiet=True, world=teacher_world(cfg))
    folder = tmp_path / "a" / "checkpoints"
    before = sorted(p.name for p in folder.iterdir())
    assert before == ["step_00000002", "step_00000004"]
    real = runs.load_file

    def held(path, *args, **kwargs):
        if "step_00000004" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(runs, "load_file", held)
    with pytest.raises(runs.RunError, match=r"newest checkpoint .* \(step 4\) does not read: .*PermissionError.*retry "
                                            r"once it is done"):
        export_teacher(str(tmp_path / "a"), str(tmp_path / "t.safetensors"))
    assert sorted(p.name for p in folder.iterdir()) == before and not (tmp_path / "t.safetensors").exists()

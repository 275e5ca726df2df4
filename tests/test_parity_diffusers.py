"""Our Wan forward equals diffusers' WanTransformer3DModel on the same random weights (fp32).

The weights reach diffusers two ways: through our rename table, and through diffusers' own
single-file converter reading a file we exported in original Wan layout (the independent check of
the table).
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from comfyui_salt.salt_core import layouts
from comfyui_salt.salt_core.model import build_model
from helpers import assert_close, tiny_inputs

diffusers = pytest.importorskip("diffusers")


def diffusers_config(cfg):
    return dict(patch_size=list(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=cfg.rope_max_len)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ours = build_model("tiny-hd128", seed=11).eval()
    # Randomise the zero/one-initialised norms too, so every weight matters.
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    via_table = diffusers.WanTransformer3DModel(**diffusers_config(ours.cfg)).eval()
    via_table.load_state_dict(layouts.from_wan_state_dict(ours.state_dict(), "diffusers"), strict=True)

    folder = tmp_path_factory.mktemp("wan_single_file")
    path = folder / "wan_original.safetensors"
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    cfg_dir = folder / "config"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **diffusers_config(ours.cfg)}))
    via_converter = diffusers.WanTransformer3DModel.from_single_file(str(path), config=str(cfg_dir),
                                                                     torch_dtype=torch.float32).eval()
    return ours, via_table, via_converter


@pytest.mark.parametrize("route", ["table", "converter"])
def test_bidirectional_forward_matches_diffusers_with_batch_timesteps(models, route):
    ours, via_table, via_converter = models
    ref_model = via_table if route == "table" else via_converter
    x, ctx = tiny_inputs(ours.cfg, frames=3, hw=(8, 12), seed=1)
    t = torch.tensor([937.5, 250.0])
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref_model(x, t, ctx, return_dict=False)[0]
    rel = assert_close(a, b, 1e-4, f"via {route}")
    print(f"parity via {route}, (B,) timesteps: rel max err {rel:.2e}")


@pytest.mark.parametrize("route", ["table", "converter"])
def test_per_frame_timesteps_match_diffusers_per_token_timesteps(models, route):
    ours, via_table, via_converter = models
    ref_model = via_table if route == "table" else via_converter
    x, ctx = tiny_inputs(ours.cfg, frames=4, hw=(8, 8), seed=2)
    t = torch.tensor([[1000.0, 833.3, 625.0, 0.0], [20.0, 400.0, 400.0, 980.0]])
    tokens = (8 // 2) * (8 // 2)
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref_model(x, t.repeat_interleave(tokens, dim=1), ctx, return_dict=False)[0]
    rel = assert_close(a, b, 1e-4, f"via {route}")
    print(f"parity via {route}, (B, F) timesteps: rel max err {rel:.2e}")


def test_the_two_routes_load_identical_weights(models):
    _, via_table, via_converter = models
    a, b = via_table.state_dict(), via_converter.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k

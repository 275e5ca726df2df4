"""The real-scale distillation path at tiny size: a prompt file, umT5 embeddings computed once from a
Hugging Face umT5 folder (a tiny random one written here) and cached, Wan's negative prompt, a teacher in
original Wan layout, a Self Forcing release file as the student's start, and a real-scale preset."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from comfyui_salt.salt_core.model import build_model  # noqa: E402
from comfyui_salt.training.distill import run_distillation  # noqa: E402
from comfyui_salt.training.distill_config import get_preset  # noqa: E402
from comfyui_salt.weights.files import export_student, load_model, save_model  # noqa: E402
from comfyui_salt.training.prompts import WAN_NEGATIVE_PROMPT  # noqa: E402

PROMPTS = ["a cat walks on the beach", "a red car drives in the city at night", "waves roll onto the beach"]


def write_tiny_umt5(folder, text_dim: int):
    """A random 1-layer umT5 encoder and a word-level tokenizer over the prompts' words, saved with
    save_pretrained (the layout `encode_umt5` reads)."""
    words = sorted({w for p in PROMPTS + [WAN_NEGATIVE_PROMPT] for w in p.replace(",", " ").split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=len(vocab), d_model=text_dim, d_kv=16, d_ff=64, num_layers=1,
                                  num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    transformers.UMT5EncoderModel(cfg).save_pretrained(folder)


@pytest.fixture(scope="module")
def real_scale_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    teacher = build_model("tiny-hd128", seed=0)
    save_model(teacher, root / "wan_teacher.safetensors", layout="wan")
    save_model(build_model("tiny-hd128", seed=1), root / "self_forcing_release.pt", layout="self_forcing")
    write_tiny_umt5(root / "umt5", teacher.cfg.text_dim)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return root


def real_cfg(root, **kw):
    base = dict(teacher=str(root / "wan_teacher.safetensors"), critic_init=str(root / "wan_teacher.safetensors"),
                student_init=str(root / "self_forcing_release.pt"), prompts_file=str(root / "prompts.txt"),
                text_encoder=str(root / "umt5"), num_frames=6, height=4, width=4, batch_size=1, gen_steps=2,
                critic_ratio=1, align_start_iter=0, align_block=1, threads=1, checkpoint_every=1)
    return get_preset("salt-causal-forcing", **{**base, **kw})


def test_a_real_scale_preset_runs_on_cached_umt5_embeddings_and_exports_both_formats(real_scale_files, tmp_path):
    cfg = real_cfg(real_scale_files, step_choices=(8, 2), step_probs=(0.5, 0.5))
    model = run_distillation(cfg, str(tmp_path), quiet=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from safetensors.torch import load_file
    embeds = load_file(str(tmp_path / "prompt_embeds.safetensors"))["embeds"]
    assert embeds.shape == (len(PROMPTS) + 1, 512, 64)            # prompts + Wan's negative prompt, 512 tokens
    lengths = [len(p.split()) for p in PROMPTS]                    # one token per word (no </s> here)
    for row, n in zip(embeds, lengths):
        assert row[:n].abs().sum(-1).min() > 0 and row[n:].abs().max() == 0   # padding zeroed, as Wan does
    assert embeds[-1].abs().sum() > 0
    wan, release = export_student(model, str(tmp_path))
    for path, layout in ((wan, "wan"), (release, "self_forcing")):
        loaded, found = load_model(path)
        assert found == layout
        for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a.float(), b.float()), (path, k)


def test_the_embedding_cache_is_reused_without_the_text_encoder(real_scale_files, tmp_path):
    run_distillation(real_cfg(real_scale_files, gen_steps=1), str(tmp_path), quiet=True)
    # the cache exists now: a rerun (resume to 2 steps) needs no umT5 folder
    again = real_cfg(real_scale_files, gen_steps=2, text_encoder="")
    run_distillation(again, str(tmp_path), quiet=True)
    with pytest.raises(ValueError, match="text_encoder"):
        run_distillation(again, str(tmp_path / "fresh"), quiet=True)

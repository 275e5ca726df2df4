"""The prompt-embedding cache of real-scale runs, filled from any encoder callable (texts → rows (L_i, D)).

Independent reference: the fake encoder's own rows, cut or zero-padded by hand to Wan's 512 tokens.
"""
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distill_models import build_prompts, fill_prompt_cache, prompt_cache_path
from comfyui_salt.training.prompts import WAN_NEGATIVE_PROMPT, EmbeddedPrompts

PROMPTS = ["a cat", "a red car drives in the city at night", "x" * 700]   # the last one is longer than 512 tokens


class FakeEncoder:
    """One token per character, seeded random values, rows of different lengths (like ComfyUI's CLIP)."""

    def __init__(self, width=8):
        self.width, self.calls = width, []

    def row(self, text):
        g = torch.Generator().manual_seed(len(text))
        return torch.randn(len(text), self.width, generator=g)

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [self.row(t) for t in texts]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def real_cfg(prompts_file, **kw):
    return get_preset("salt-causal-forcing", teacher="unused", prompts_file=str(prompts_file), **kw)


def test_the_cache_holds_prompts_and_wans_negative_prompt_cut_or_zero_padded_to_512_tokens(prompts_file, tmp_path):
    encoder = FakeEncoder()
    assert fill_prompt_cache(real_cfg(prompts_file), str(tmp_path / "run"), encoder)
    assert encoder.calls == [PROMPTS + [WAN_NEGATIVE_PROMPT]]
    embeds = load_file(prompt_cache_path(str(tmp_path / "run")))["embeds"]
    assert embeds.shape == (len(PROMPTS) + 1, 512, 8) and embeds.dtype == torch.float32
    for text, got in zip(PROMPTS + [WAN_NEGATIVE_PROMPT], embeds):
        want = torch.zeros(512, 8)
        n = min(len(text), 512)
        want[:n] = encoder.row(text)[:n]
        assert torch.equal(got, want), text


def test_the_cache_is_filled_once_per_run_folder_and_then_read_without_an_encoder(prompts_file, tmp_path):
    cfg, encoder = real_cfg(prompts_file), FakeEncoder()
    assert fill_prompt_cache(cfg, str(tmp_path), encoder)
    assert not fill_prompt_cache(cfg, str(tmp_path), encoder) and len(encoder.calls) == 1
    prompts = build_prompts(cfg, SimpleNamespace(cfg=SimpleNamespace(text_dim=8)), str(tmp_path))
    assert prompts.embeds.shape == (3, 512, 8) and prompts.negative.shape == (1, 512, 8)
    with pytest.raises(ValueError, match="text_encoder"):
        EmbeddedPrompts(str(prompts_file), str(tmp_path / "other.safetensors"))
    used = FakeEncoder()
    EmbeddedPrompts(str(prompts_file), str(tmp_path / "other.safetensors"), encoder=used)
    assert len(used.calls) == 1


def test_toy_runs_need_no_cache(tmp_path):
    assert not fill_prompt_cache(get_preset("toy-salt"), str(tmp_path), FakeEncoder())
    assert not list(tmp_path.iterdir())


def test_embeddings_of_another_width_than_the_teachers_are_refused_naming_both_widths(prompts_file, tmp_path):
    cfg = real_cfg(prompts_file)
    fill_prompt_cache(cfg, str(tmp_path), FakeEncoder(width=8))
    with pytest.raises(ValueError, match=r"8 wide.*text_dim=4096"):
        build_prompts(cfg, SimpleNamespace(cfg=SimpleNamespace(text_dim=4096)), str(tmp_path))


@pytest.mark.parametrize("rows, words", [([torch.zeros(3, 8)], "1 embeddings for 4 texts"),
                                         ([torch.zeros(3, 8)] * 3 + [torch.zeros(3, 4)], "all of one width"),
                                         ([torch.zeros(1, 3, 8)] * 4, "one \\(tokens, width\\)")])
def test_an_encoder_returning_the_wrong_rows_is_refused(prompts_file, tmp_path, rows, words):
    with pytest.raises(ValueError, match=words):
        fill_prompt_cache(real_cfg(prompts_file), str(tmp_path), lambda texts: rows)


def test_a_prompts_file_edited_after_the_cache_was_made_is_embedded_again_or_refused_without_an_encoder(
        prompts_file, tmp_path, caplog):
    """The cache keeps a digest of the texts it embeds: lines added (it failed deep in sampling, an index past the
    cache) or edited (it trained on the old embeddings in silence) are embedded again where an encoder is at hand
    (the node, the CLI's text_encoder), and refused by name where none is; unchanged prompts read the cache."""
    cfg, encoder = real_cfg(prompts_file), FakeEncoder()
    fill_prompt_cache(cfg, str(tmp_path), encoder)
    for text in (PROMPTS + ["a dog", "rain"], ["a cat", "a blue car drives in the city at night", "x" * 700]):
        prompts_file.write_text("\n".join(text) + "\n")
        with pytest.raises(ValueError, match="were made from other prompts.*text_encoder"):
            build_prompts(cfg, SimpleNamespace(cfg=SimpleNamespace(text_dim=8)), str(tmp_path))
        with caplog.at_level("WARNING"):
            assert fill_prompt_cache(cfg, str(tmp_path), encoder)
        assert "the prompts changed since" in caplog.text and encoder.calls[-1] == text + [WAN_NEGATIVE_PROMPT]
        prompts = build_prompts(cfg, SimpleNamespace(cfg=SimpleNamespace(text_dim=8)), str(tmp_path))
        assert prompts.embeds.shape[0] == len(text) and torch.equal(prompts.embeds[1, :5], encoder.row(text[1])[:5])
    assert not fill_prompt_cache(real_cfg(prompts_file, negative_prompt="wan"), str(tmp_path), encoder)
    assert fill_prompt_cache(real_cfg(prompts_file, negative_prompt="blurry"), str(tmp_path), encoder)


def test_a_prompts_file_too_large_to_embed_in_the_hosts_memory_is_refused_before_the_encoder_runs(prompts_file,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    """8 MiB per prompt at umT5's width (a 10,000-line file: 78 GiB in the cache, twice that while embedded)."""
    from comfyui_salt.training import prompts
    monkeypatch.setattr(prompts, "available_memory", lambda device: 3 * 2 * 512 * 4096 * 4)   # 3 prompts' worth
    encoder = FakeEncoder()
    with pytest.raises(MemoryError, match=r"prompts_file: embedding 3 prompts and the negative prompt .* needs about 64(\.0)? MiB.*fewer "
                                          r"prompts \(each takes 16(\.0)? MiB while embedded"):
        fill_prompt_cache(real_cfg(prompts_file), str(tmp_path), encoder)
    assert not encoder.calls
    prompts_file.write_text("a cat\nrain\n")
    assert fill_prompt_cache(real_cfg(prompts_file), str(tmp_path), encoder)   # 2 + the negative: they fit


def test_a_text_longer_than_wan_reads_is_cut_with_a_warning_that_counts_the_lost_tokens(prompts_file, tmp_path,
                                                                                         caplog):
    """The 700-token prompt loses 188 tokens (Wan and diffusers cut at 512 too): said once, by its row; the others,
    and an encoder's own zeroed padding past 512 (ComfyUI pads to at least 512), are not reported."""
    padded = lambda texts: [torch.cat([r, torch.zeros(600, r.shape[1])]) for r in FakeEncoder()(texts)]
    with caplog.at_level("WARNING"):
        fill_prompt_cache(real_cfg(prompts_file), str(tmp_path), padded)
    cuts = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert cuts == ["text 3 of 4 (the last is the negative prompt) is 188 tokens longer than the 512 Wan reads; its "
                    "end is cut (as Wan and diffusers cut it): shorten it to keep it"]


def test_an_interrupted_cache_write_leaves_the_old_cache_whole(prompts_file, tmp_path, monkeypatch):
    """Killed while writing (here: the writer raises half-way), the old cache still reads back and nothing else is
    left in the folder; without the atomic write a torn file stood at the cache's name."""
    from comfyui_salt.training import prompts
    cfg = real_cfg(prompts_file)
    fill_prompt_cache(cfg, str(tmp_path), FakeEncoder())
    before = load_file(prompt_cache_path(str(tmp_path)))["embeds"]
    listing = sorted(p.name for p in tmp_path.iterdir())

    def torn(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise KeyboardInterrupt
    monkeypatch.setattr(prompts, "save_file", torn)
    prompts_file.write_text("a dog\n")
    with pytest.raises(KeyboardInterrupt):
        fill_prompt_cache(cfg, str(tmp_path), FakeEncoder())
    assert torch.equal(load_file(prompt_cache_path(str(tmp_path)))["embeds"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


@pytest.mark.parametrize("length", [1, 5, 8, 13])
def test_fit_context_cuts_or_zero_pads_to_text_len_and_counts_only_the_lost_words(length):
    """Brute force, row by row: the first 8 tokens kept, zeros after a short row; `dropped` is the most non-zero
    tokens past 8 in one row (a row's own zero padding past 8 does not count)."""
    from comfyui_salt.salt_core.model import fit_context
    ctx = torch.randn(3, length, 4, generator=torch.Generator().manual_seed(length))
    ctx[1, 9:] = 0                                          # row 1: at most one word past 8
    ctx[2, 10:12] = 0                                       # row 2: a gap inside its words
    got, dropped = fit_context(ctx, 8)
    assert got.shape == (3, 8, 4)
    want, lost = torch.zeros(3, 8, 4), []
    for b in range(3):
        want[b, :min(length, 8)] = ctx[b, :8]
        lost.append(sum(bool(ctx[b, i].abs().sum() > 0) for i in range(8, length)))
        assert fit_context(ctx[b:b + 1], 8)[1] == lost[b], b          # each row's own count: its padding is no word
    assert torch.equal(got, want) and dropped == max(lost)


def test_a_umt5_folder_too_large_for_the_hosts_memory_is_refused_before_the_encoder_loads(tmp_path, monkeypatch):
    """4 bytes per parameter counted in the safetensors headers (two shards, bf16 on disk: 14 parameters, 56 bytes
    in float32, twice the 28 on disk), refused by name before transformers is imported or a weight read."""
    from safetensors.torch import save_file
    from comfyui_salt.training import prompts
    save_file({"a": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(8, dtype=torch.bfloat16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert prompts.encoder_weight_bytes(str(tmp_path)) == 4 * 14
    monkeypatch.setattr(prompts, "available_memory", lambda device: 55)
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)   # importing it would fail
    with pytest.raises(MemoryError, match=r"text_encoder: loading the umT5 encoder of .* in float32 needs about .*"
                                          r"host's free memory.*SaltDistill's `clip` input"):
        prompts.encode_umt5(str(tmp_path), ["a cat"])


def test_the_caches_digest_is_of_the_texts_in_order_and_an_older_cache_without_one_is_compared_by_its_rows(
        prompts_file, tmp_path):
    """Rows are sampled by index: the same lines in another order are other embeddings per index. A cache written
    before the digest existed holds N + 1 rows and nothing else to compare."""
    from safetensors.torch import save_file
    from comfyui_salt.training.prompts import cache_is_current
    fill_prompt_cache(real_cfg(prompts_file), str(tmp_path), FakeEncoder())
    path = prompt_cache_path(str(tmp_path))
    assert cache_is_current(path, PROMPTS, "wan")
    assert not cache_is_current(path, PROMPTS[::-1], "wan") and not cache_is_current(path, PROMPTS, "blurry")
    old = str(tmp_path / "old.safetensors")
    save_file({"embeds": torch.zeros(len(PROMPTS) + 1, 4, 8)}, old)               # no metadata: an older cache
    assert cache_is_current(old, PROMPTS[::-1], "anything")
    assert not cache_is_current(old, PROMPTS + ["one more"], "wan") and not cache_is_current(old, PROMPTS[:2], "wan")

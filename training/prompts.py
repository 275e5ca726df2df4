"""Prompt sources for distillation: text embeddings for conditional and unconditional branches.

A prompt source has `sample(rng, batch) -> (captions, context (B, L, D), uncond (B, L, D))`. Toy-world runs get
theirs from the toy wing (`toy.prompts.ToyPrompts`, through the run's DistillWorld); this module holds the
real-scale one:
- `EmbeddedPrompts`: real scale — prompt embeddings computed once and cached in a safetensors file
  next to the run (`cache_prompt_embeddings`); the unconditional branch is Wan's negative prompt.
  The embeddings come from an *encoder*: any callable texts → N rows (L_i, D) (a (N, L, D) tensor
  is one), e.g. `umt5_encoder(<Hugging Face umT5 folder>)` here or, in ComfyUI, the node's adapter
  around a CLIP object. Rows are cut or zero-padded to Wan's 512 tokens here, in one place.
Knows nothing of ComfyUI.
"""
import hashlib
import logging
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..salt_core.model import fit_context
from ..salt_core.validate import available_memory, check_memory, format_bytes, quote
from ..weights.files import atomic_write


# Wan 2.1's default negative prompt (Wan: wan/configs/shared_config.py `sample_neg_prompt`; the same
# text Self Forcing's configs use for the unconditional branch of the real score).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走")
log = logging.getLogger("salt.prompts")

TEXT_LEN = 512   # Wan's text_len: the context every prompt embedding is cut or zero-padded to
UMT5_WIDTH = 4096   # umT5-XXL's output width, Wan 2.1's text_dim: the size a cache of N prompts is checked at
# Every text is cut to this many characters before it is tokenized, so a 1 MB line cannot ask the encoder for a huge
# attention. umT5's SentencePiece pieces average about 4 characters of English and rarely pass 16, so 8 per token
# keeps all that Wan reads (512 tokens) of any ordinary prompt; a longer text is cut, and the cut is logged.
MAX_PROMPT_CHARS = 8 * TEXT_LEN


class EmbeddedPrompts:
    """Prompts from a text file with their embeddings computed once and cached on disk.

    The cache is filled from `encoder` (texts → rows, see the module docstring) or else from the Hugging Face
    umT5 folder `text_encoder`; once it exists neither is needed (a resumed run reads the cache).
    """

    def __init__(self, prompts_file: str, cache_path: str, text_encoder: str = "", negative_prompt: str = "wan",
                 encoder=None):
        self.prompts = read_prompts_file(prompts_file)
        current = os.path.exists(cache_path) and cache_is_current(cache_path, self.prompts, negative_prompt)
        if not current:
            if encoder is None and not text_encoder:
                if os.path.exists(cache_path):
                    raise ValueError(f"the cached prompt embeddings at {cache_path!r} were made from other prompts "
                                     f"(the prompts file or negative_prompt changed); pass text_encoder=<umT5 "
                                     f"folder> to compute them again, or restore the prompts the run started with")
                raise ValueError(f"no cached prompt embeddings at {cache_path!r}; pass text_encoder=<umT5 folder> "
                                 f"to compute them once")
            if os.path.exists(cache_path):
                log.warning("the prompts changed since %s was made (prompts file or negative_prompt); embedding "
                            "them again", cache_path)
            cache_prompt_embeddings(self.prompts, negative_prompt, cache_path,
                                    encoder if encoder is not None else umt5_encoder(text_encoder))
        embeds = load_file(cache_path)["embeds"]
        self.embeds, self.negative = embeds[:-1], embeds[-1:]

    def sample(self, rng: np.random.Generator, batch: int):
        idx = rng.integers(0, len(self.prompts), batch)
        return [self.prompts[i] for i in idx], self.embeds[idx], self.negative.expand(batch, -1, -1)


def prompts_bytes(prompts_file: str) -> int:
    """Host bytes reading a prompts file as a list of its lines takes in Python, counted in one streamed pass that
    splits and strips the lines as read_prompts_file does (text mode: '\\n', '\\r\\n' and a lone '\\r' end a line):
    each kept line's str object and its list entry (8 bytes, 16 while the list grows), the longest line twice more
    (as read and as stripped, while it is the one being read), and 64 KiB of read buffers. The pass itself holds one
    line at a time (a file of one huge line: that line twice)."""
    total, longest = 64 << 10, 0
    with open(prompts_file, encoding="utf-8-sig", errors="replace") as f:   # undecodable bytes: named by the read
        for line in f:
            stripped = line.strip()
            if stripped:
                total += sys.getsizeof(stripped) + 16
            longest = max(longest, sys.getsizeof(line))
    return total + 2 * longest


def read_prompts_file(prompts_file: str) -> list:
    """The non-empty lines of a UTF-8 text file (one prompt each), stripped (cut to MAX_PROMPT_CHARS when embedded);
    the memory their list takes (prompts_bytes) checked against the host's free memory before it is built (the node
    reads a file of ComfyUI's input folder, where any client may upload 100 MB)."""
    if not prompts_file or not os.path.isfile(prompts_file):
        raise FileNotFoundError(f"prompts_file {quote(prompts_file)} does not exist; pass a text file with one prompt "
                                f"per line")
    name = quote(os.path.basename(prompts_file))
    check_memory(f"prompts_file {name} ({format_bytes(os.path.getsize(prompts_file))}) read as a list of lines",
                 prompts_bytes(prompts_file), available_memory("cpu"), limit_what="the host's free memory",
                 fix="split the file, or keep the prompts the run needs")
    try:
        with open(prompts_file, encoding="utf-8-sig") as f:   # a byte-order mark is no part of a prompt
            prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts_file {quote(os.path.basename(prompts_file))} is not UTF-8 text (byte "
                         f"{e.object[e.start]:#04x} at position {e.start}); save it as UTF-8") from None
    if not prompts:
        raise ValueError(f"prompts_file {quote(os.path.basename(prompts_file))} holds no prompts")
    return prompts


def pad_embeddings(rows, max_len: int = TEXT_LEN) -> torch.Tensor:
    """N rows (L_i, D) → (N, max_len, D) float32: cut after max_len tokens (logged when words are cut), zero-padded
    after L_i (Wan pads its context with zeros to text_len; the encoder already zeroed its own padding positions)."""
    rows = list(rows)
    width = {tuple(r.shape[1:]) for r in rows}
    if not rows or len(width) != 1 or any(r.dim() != 2 for r in rows):
        raise ValueError(f"the text encoder returned rows of shapes {[tuple(r.shape) for r in rows]}; expected one "
                         f"(tokens, width) tensor per prompt, all of one width")
    out = torch.zeros(len(rows), max_len, rows[0].shape[-1])
    for i, r in enumerate(rows):
        out[i], dropped = fit_context(r[None].detach().float().cpu(), max_len)
        if dropped:
            log.warning("text %d of %d (the last is the negative prompt) is %d tokens longer than the %d Wan reads; "
                        "its end is cut (as Wan and diffusers cut it): shorten it to keep it", i + 1, len(rows),
                        dropped, max_len)
    return out


PROMPTS_KEY = "salt_prompts"   # the cache's metadata: a digest of the texts it embeds (prompt_digest)


def prompt_digest(prompts: list, negative_prompt: str) -> str:
    """sha256 of the texts a cache embeds, as the encoder sees them (cut, the negative prompt resolved) and in order."""
    negative = WAN_NEGATIVE_PROMPT if negative_prompt == "wan" else negative_prompt
    digest = hashlib.sha256()
    for text in list(prompts) + [negative]:
        digest.update(cut_text(text, quiet=True).encode("utf-8") + b"\0")
    return digest.hexdigest()


def cache_is_current(cache_path: str, prompts: list, negative_prompt: str) -> bool:
    """Whether the cache at `cache_path` embeds these prompts and this negative prompt: its digest, or for a cache
    of an earlier version (no digest) its count, N + 1 rows, all there is to compare."""
    with safe_open(cache_path, framework="pt") as f:
        stored = (f.metadata() or {}).get(PROMPTS_KEY)
        rows = f.get_slice("embeds").get_shape()[0]
    if stored is not None:
        return stored == prompt_digest(prompts, negative_prompt)
    return rows == len(prompts) + 1


def cache_prompt_embeddings(prompts: list, negative_prompt: str, cache_path: str, encoder) -> torch.Tensor:
    """Embed `prompts` and the negative prompt ("wan": Wan's) with `encoder` and save them to `cache_path` as
    {"embeds": (N + 1, 512, D)}, the negative prompt last, with the texts' digest; returns the tensor."""
    negative = WAN_NEGATIVE_PROMPT if negative_prompt == "wan" else negative_prompt
    texts = [cut_text(t) for t in list(prompts) + [negative]]
    need = 2 * len(texts) * TEXT_LEN * UMT5_WIDTH * 4   # the encoder's rows and the padded cache, float32
    check_memory(f"embedding {len(prompts)} prompts and the negative prompt ({TEXT_LEN} tokens × {UMT5_WIDTH} wide "
                 f"each, float32)", need,
                 available_memory(torch.device("cpu")), where="prompts_file", limit_what="the host's free memory",
                 fix=f"use fewer prompts (each takes {format_bytes(2 * TEXT_LEN * UMT5_WIDTH * 4)} while embedded, "
                     f"{format_bytes(TEXT_LEN * UMT5_WIDTH * 4)} in the cache)")
    rows = encoder(texts)
    if len(rows) != len(texts):
        raise ValueError(f"the text encoder returned {len(rows)} embeddings for {len(texts)} texts")
    embeds = pad_embeddings(rows)
    meta = {PROMPTS_KEY: prompt_digest(prompts, negative_prompt)}   # written whole: a killed run leaves no torn cache
    atomic_write(cache_path, lambda path: save_file({"embeds": embeds.contiguous()}, path, metadata=meta))
    return embeds


def cut_text(text: str, quiet: bool = False) -> str:
    """`text` cut to MAX_PROMPT_CHARS characters (logged when cut, unless `quiet`): the one place every text is
    bounded before an encoder sees it."""
    if len(text) > MAX_PROMPT_CHARS and not quiet:
        log.warning("a %d-character prompt was cut to %d characters before encoding", len(text), MAX_PROMPT_CHARS)
    return text[:MAX_PROMPT_CHARS]


def umt5_encoder(path: str):
    """An encoder (texts → (N, 512, 4096)) reading a Hugging Face umT5 folder (tokenizer + UMT5EncoderModel)."""
    return lambda texts: encode_umt5(path, texts)


def encoder_weight_bytes(path: str) -> int:
    """Bytes a Hugging Face model folder's weights take loaded in float32: 4 per parameter counted in its
    .safetensors headers (nothing read but the headers); a folder of .bin files only, their size on disk (a float32
    file's own size, half of what a bf16 one will take)."""
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    tensors = [os.path.join(path, n) for n in names if n.lower().endswith(".safetensors")]
    if not tensors:
        return sum(os.path.getsize(os.path.join(path, n)) for n in names if n.lower().endswith(".bin"))
    count = 0
    for file in tensors:
        with safe_open(file, framework="pt") as f:
            count += sum(int(np.prod(f.get_slice(k).get_shape(), dtype=np.int64)) for k in f.keys())
    return 4 * count


def encode_umt5(path: str, texts: list, max_len: int = TEXT_LEN, batch: int = 8) -> torch.Tensor:
    """umT5 encoder outputs (N, max_len, 4096), padding positions zeroed (as Wan / Self Forcing); the float32
    weights are checked against the host's free memory before they are loaded (umT5-XXL's take about 21 GiB)."""
    check_memory(f"loading the umT5 encoder of {quote(path)} in float32", encoder_weight_bytes(path),
                 available_memory(torch.device("cpu")), where="text_encoder", limit_what="the host's free memory",
                 fix="free host memory, or fill the run's prompt cache where there is more (the cache, "
                     "prompt_embeds.safetensors in the run folder, is all a run reads once it exists), or embed the "
                     "prompts in ComfyUI: SaltDistill's `clip` input (Load CLIP, type 'wan') fills the same cache")
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel  # optional: pip install transformers sentencepiece
    except ImportError as e:
        raise ImportError("computing umT5 prompt embeddings needs `transformers` and `sentencepiece`") from e
    tok = AutoTokenizer.from_pretrained(path)
    enc = UMT5EncoderModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            t = tok(texts[i:i + batch], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
            h = enc(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
            outs.append(h * t.attention_mask.unsqueeze(-1))
    return torch.cat(outs)

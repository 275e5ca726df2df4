"""A toy text encoder for toy-world captions: a fixed vocabulary and a seeded embedding table.

It stands in for umT5: `encode` returns (B, L, text_dim) embeddings zero-padded to L = max_tokens,
and `empty` returns all zeros for the unconditional (CFG) branch, as Wan's pipeline pads umT5
outputs with zeros up to the context length.

Filler words ("a", "moving", "on", "background", ...) are accepted and dropped, so the default
caption becomes 4 tokens in caption order: colour, shape, direction, background. Each token is
its word's row of a seeded N(0, 1) table plus a fixed seeded per-position vector (std 0.5), so a
model can tell slots apart even if a later world reuses a word in two slots. Padding positions
stay exactly zero. Knows nothing of models or of how captions are rendered.
"""
import torch

from ..salt_core.validate import quote
from .world import DIRECTION_VECTORS, TOY_WORLD_PRESETS, ToyWorldConfig

FILLER_WORDS = ("a", "an", "the", "moving", "on", "background", "in", "and", "with")
POSITION_STD = 0.5   # std of the per-position vectors, relative to the word rows' N(0, 1)


def world_vocabulary(world: ToyWorldConfig) -> tuple:
    """Content words of a world in a fixed order: colours, shapes, directions, backgrounds."""
    return world.colour_names + world.shape_names + tuple(DIRECTION_VECTORS) + world.background_names


class ToyTextEncoder:
    """Deterministic caption → (B, L, text_dim) embeddings over a fixed toy vocabulary."""

    def __init__(self, text_dim: int = 32, seed: int = 0, max_tokens: int = 8,
                 world: ToyWorldConfig | None = None):
        """Build the vocabulary from `world` (default preset) and the seeded tables on CPU."""
        if text_dim < 1 or max_tokens < 1:
            raise ValueError(f"ToyTextEncoder: text_dim={text_dim}, max_tokens={max_tokens}; both must be >= 1")
        self.text_dim, self.seed, self.max_tokens = text_dim, seed, max_tokens
        self.vocabulary = world_vocabulary(world if world is not None else TOY_WORLD_PRESETS["default"])
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(len(self.vocabulary), text_dim, generator=gen)          # (V, text_dim)
        self.positions = POSITION_STD * torch.randn(max_tokens, text_dim, generator=gen)  # (L, text_dim)

    def tokenize(self, text: str) -> list:
        """Vocabulary ids of the content words of one caption (fillers dropped, case-insensitive)."""
        ids = []
        for word in text.lower().replace(".", " ").replace(",", " ").split():
            if word in FILLER_WORDS:
                continue
            if word not in self.index:
                raise ValueError(f"ToyTextEncoder: unknown word {quote(word)} in caption {quote(text)}; the "
                                 f"vocabulary is {list(self.vocabulary)} (fillers {list(FILLER_WORDS)} are dropped)")
            ids.append(self.index[word])
        if len(ids) > self.max_tokens:
            raise ValueError(f"ToyTextEncoder: caption {quote(text)} has {len(ids)} content words but max_tokens="
                             f"{self.max_tokens}; shorten it or raise max_tokens")
        return ids

    def encode(self, captions: list, device=None, dtype=torch.float32) -> torch.Tensor:
        """Embeddings (B, L=max_tokens, text_dim), zero after each caption's tokens; '' gives all zeros."""
        if isinstance(captions, str):
            raise TypeError(f"ToyTextEncoder.encode: captions={quote(captions)} is a str; pass a list of captions")
        out = torch.zeros(len(captions), self.max_tokens, self.text_dim)
        for b, text in enumerate(captions):
            ids = self.tokenize(text)
            if ids:
                out[b, :len(ids)] = self.table[ids] + self.positions[:len(ids)]
        return out.to(device=device, dtype=dtype)

    def empty(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """All-zero embeddings (B, L, text_dim) for the unconditional / CFG branch."""
        return torch.zeros(batch, self.max_tokens, self.text_dim, device=device, dtype=dtype)

    def __call__(self, captions: list, device=None, dtype=torch.float32) -> torch.Tensor:
        """Alias of `encode`."""
        return self.encode(captions, device=device, dtype=dtype)

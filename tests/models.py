"""A user's own models, for the registry's python: form (README "Your model, your data"; tests/test_your_model.py).

    python:tests.models:tiny        an image encoder: forward(images) -> features
    python:tests.models:tiny_clip   a CLIP-like model: encode_image, encode_text and a tokenizer
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyEncoder(nn.Module):
    """Patches of 8×8 pixels, a linear embedding, mean-pooled: (B, 3, 32, 32) -> (B, dim)."""

    data_config = {"input_size": (3, 32, 32), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def __init__(self, dim: int = 16):
        super().__init__()
        self.patches = nn.Conv2d(3, dim, kernel_size=8, stride=8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patches(images).mean(dim=(2, 3))


def tiny(dim: int = 16) -> nn.Module:
    return TinyEncoder(dim)


class CharTokenizer:
    """Texts -> (N, length) character codes (0 pads): enough for a text tower that has never seen a BPE."""

    def __init__(self, length: int = 32, vocab: int = 128):
        self.length, self.vocab = length, vocab

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.length, dtype=torch.long)
        for i, text in enumerate(texts):
            codes = [min(ord(c), self.vocab - 1) for c in text[: self.length]]
            out[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
        return out


class TinyCLIP(nn.Module):
    """An image tower (TinyEncoder) and a text tower (character embeddings, mean-pooled) in one embedding space."""

    data_config = TinyEncoder.data_config

    def __init__(self, dim: int = 16):
        super().__init__()
        self.visual = TinyEncoder(dim)
        self.embed = nn.Embedding(128, dim)
        self.tokenizer = CharTokenizer()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens > 0).unsqueeze(-1).float()
        x = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return F.normalize(x, dim=-1) if normalize else x


def tiny_clip(dim: int = 16) -> nn.Module:
    return TinyCLIP(dim)


class PlainCLIP(TinyCLIP):
    """A CLIP-like model that says nothing of its preprocessing (no data_config): timm's 224-pixel defaults."""

    data_config = None


def plain_clip(dim: int = 16) -> nn.Module:
    return PlainCLIP(dim)



# ------------------------------------------------------------------- a CLIP whose right answers are known by hand
COLOURS = ["red", "green", "blue"]
COLOUR_VALUES = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


class ColourTokenizer:
    """A text -> one token: the index of the first colour word in it (3 when none)."""

    def __init__(self, words=COLOURS):
        self.words = list(words)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[next((i for i, w in enumerate(self.words) if w in t), 3)] for t in texts])


class ColourTower(nn.Module):
    """The image tower: an image's feature is its mean colour (normalised pixels averaged over space). It also
    holds `basis`, the colours' text embeddings, which the text side reads."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))
        self.basis = nn.Parameter(torch.cat([torch.eye(3), torch.zeros(1, 3)]))  # (4, 3): red, green, blue, none

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) * self.gain


class ColourCLIP(nn.Module):
    """encode_image: the mean colour; encode_text: the colour's one-hot (a row of visual.basis, times the buffer
    text_sign). A solid red, green or blue image is then classified right every time (top-1 100%) — and with its
    colours inverted, never (0%): red (1, -1, -1) after normalisation becomes (-1, 1, 1), closest to green and blue."""

    data_config = {"input_size": (3, 16, 16), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                   "interpolation": "bilinear"}

    def __init__(self):
        super().__init__()
        self.visual = ColourTower()
        self.register_buffer("text_sign", torch.ones(1))
        self.tokenizer = ColourTokenizer()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual.basis[tokens[:, 0]] * self.text_sign
        return F.normalize(x, dim=-1) if normalize else x


def colour_clip() -> nn.Module:
    return ColourCLIP()


def tiny_half() -> TinyEncoder:
    """TinyEncoder built in float16 (a factory that returns a half-precision module)."""
    return TinyEncoder().half()

"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision").

Two towers map images and texts into one D_e-dimensional space:
  image: the reference ViT with CLIP's variations (LayerNorm before the blocks, no bias on the patch
         projection, LayerNorm eps 1e-5, optionally QuickGELU), its [CLS] output projected without bias;
  text:  token embedding + learned position embedding, causal pre-norm blocks, a final LayerNorm, the
         output at the end-of-text token (the highest token id, as in CLIP's BPE vocabulary) projected.
Training contrasts the N² pairs of a batch: logits = exp(s)·cos(image_i, text_j), with s = log(1/τ)
learned and clipped so the scale never exceeds 100 (CLIP section 2.5): the parameter is clamped to [0, ln 100] after
each optimizer step (clamp_logit_scale_), as open_clip's training loop does (open_clip_train/train.py: "we clamp to
4.6052 = ln(100), as in the original paper"); the forward pass reads exp(s) as it is, as OpenAI's, open_clip's and
transformers' CLIP forwards do, so a checkpoint whose s exceeds ln 100 scores its pairs as they do. SigLIP's
pairwise sigmoid loss, which scores each pair on its own with a learned temperature and bias, is beside it
(siglip_loss).

Only torch is imported. Names follow open_clip where they can (token_embedding, positional_embedding,
ln_final, text_projection, logit_scale) and the reference ViT's inside the image tower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import Block, ViT, ViTConfig

MAX_LOGIT_SCALE = math.log(100.0)  # training clamps s here, so that logits are scaled by at most 100


@dataclass(frozen=True)
class CLIPTextConfig:
    context_length: int = 77  # tokens per text, [SOT] ... [EOT] padded with zeros
    vocab_size: int = 49408  # CLIP's byte-pair vocabulary
    width: int = 512  # token dimension
    depth: int = 12  # causal encoder blocks
    heads: int = 8  # attention heads per block
    mlp_dim: int = 2048  # hidden width of each block's MLP
    act: str = "gelu"  # "gelu" or "quick_gelu"
    norm_eps: float = 1e-5  # LayerNorm epsilon
    fused_attn: bool = False  # False: the explicit formula; True: torch's fused kernel


def clip_vision_config(**kwargs) -> ViTConfig:
    """A ViTConfig with CLIP's image-tower choices; kwargs set size and the shared embedding dimension."""
    base = dict(pre_norm=True, patch_bias=False, head_bias=False, norm_eps=1e-5, num_classes=512)
    return ViTConfig(**{**base, **kwargs})


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512  # D_e: the shared embedding space
    vision: ViTConfig = field(default_factory=lambda: clip_vision_config(patch_size=32))  # ViT-B/32
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    init_logit_scale: float = math.log(1 / 0.07)  # s = log(1/τ) at initialisation, τ = 0.07

    def __post_init__(self):
        if self.vision.num_classes != self.embed_dim or self.vision.head_bias:
            raise ValueError("the image tower's head is the projection into the shared space: set "
                             f"vision.num_classes={self.embed_dim} and vision.head_bias=False "
                             "(clip_vision_config does both)")


class TextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig, embed_dim: int):
        super().__init__()
        self.config = config
        W = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, W)
        self.positional_embedding = nn.Parameter(torch.randn(config.context_length, W) * 0.01)
        self.blocks = nn.ModuleList([
            Block(W, config.heads, config.mlp_dim, True, config.act, config.norm_eps, config.fused_attn)
            for _ in range(config.depth)
        ])
        self.ln_final = nn.LayerNorm(W, eps=config.norm_eps)
        self.text_projection = nn.Parameter(torch.randn(W, embed_dim) * W**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, D_e) text embeddings, read at each text's end-of-text token."""
        B, T = tokens.shape
        if T > self.config.context_length:
            raise ValueError(f"texts of {T} tokens exceed the context length {self.config.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:T]  # (B, T, W)
        for block in self.blocks:
            x = block(x, is_causal=True)  # token t sees tokens 0..t
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id in CLIP's vocabulary
        x = x[torch.arange(B, device=x.device), eot]  # (B, W)
        return x @ self.text_projection  # (B, D_e)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.visual = ViT(config.vision)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)  # (B, D_e): [CLS] output, projected by the head (no bias)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(tokens)  # (B, D_e)
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """exp(s) = 1/τ, as the parameter holds it."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """s clamped to [0, ln 100] in place: a training step's last act, so the scale never exceeds 100."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B_i, B_t), logits_per_text (B_t, B_i)): scaled cosine similarities."""
        image = self.encode_image(images, normalize=True)
        text = self.encode_text(tokens, normalize=True)
        logits_per_image = self.scale() * image @ text.T
        return logits_per_image, logits_per_image.T

    def set_fused_attn(self, fused: bool) -> "CLIP":
        """Switch both towers between the explicit formula and torch's fused kernel."""
        self.visual.set_fused_attn(fused)
        for block in self.text.blocks:
            block.attn.fused = fused
        return self


def _pairs(image_features: torch.Tensor, text_features: torch.Tensor, reduction: str):
    """Both losses' inputs checked (N matching pairs, a known reduction) and computed in at least float32."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"image features {tuple(image_features.shape)} and text features "
                         f"{tuple(text_features.shape)} must both be (N, D) for N matching pairs")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r}: 'mean' or 'none'")
    acc = torch.promote_types(image_features.dtype, torch.float32)
    return image_features.to(acc), text_features.to(acc)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
              reduction: str = "mean"):
    """The symmetric contrastive loss over the N² pairs of a batch of N matching (image, text) pairs.

    With L = logit_scale · I Tᵀ (cosine similarities divided by τ when the features are L2-normalised,
    as encode_*(normalize=True) gives them; logit_scale = 1/τ = exp(s)):
        loss = ½ [ −1/N Σ_i log softmax_j(L)_ii  −  1/N Σ_j log softmax_i(L)_jj ]
    the mean of the image->text and text->image cross-entropies, the N matching pairs being the targets.
    reduction="none" gives its 2N per-example terms instead (the N image->text cross-entropies, then the N
    text->image ones), whose mean is the loss.
    bfloat16 / float16 features are computed in float32 (the loss comes back in float32), as mixed-precision
    training computes its loss.
    """
    image_features, text_features = _pairs(image_features, text_features, reduction)
    logits = logit_scale * image_features @ text_features.T  # (N, N): row i = image i against every text
    image_to_text = -torch.diagonal(logits.log_softmax(dim=1))  # softmax over texts
    text_to_image = -torch.diagonal(logits.log_softmax(dim=0))  # softmax over images
    if reduction == "none":
        return torch.cat([image_to_text, text_to_image])
    return (image_to_text.mean() + text_to_image.mean()) / 2


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float, reduction: str = "mean"):
    """SigLIP's pairwise sigmoid loss (Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training", eq. 1).

    Each of the N² pairs of a batch is its own binary problem: with logits z_ij = t · x_i·y_j + b (t = exp(t')
    the learned temperature, b the learned bias; x, y L2-normalised) and labels ℓ_ij = +1 for the N matching
    pairs and −1 for the others,
        loss = −1/N Σ_i Σ_j log σ(ℓ_ij z_ij)
    (a sum over the N² pairs divided by the batch size, as the paper's pseudo-code and open_clip's SigLipLoss
    normalise it). reduction="none" gives the N² per-pair terms −log σ(ℓ_ij z_ij), row-major (image i, text j);
    their sum divided by N is the loss. Low-precision features are computed in float32, as clip_loss does.
    """
    image_features, text_features = _pairs(image_features, text_features, reduction)
    n = image_features.shape[0]
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (N, N): z_ij
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # +1 on the diagonal, −1 elsewhere
    terms = -F.logsigmoid(labels * logits)  # (N, N)
    if reduction == "none":
        return terms.flatten()
    return terms.sum() / n

"""Supervised training from scratch with one recipe for every architecture.

Recipe: AdamW, linear warm-up then cosine decay to zero, label-smoothed cross-entropy, the same
augmentation for every model (random crop with 2-pixel padding and horizontal flip), a fixed number
of optimisation steps (a stated policy, see the data-scale suite), fixed seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


class TrainingDiverged(RuntimeError):
    """A training run's loss became NaN or infinite: the run stops; nothing of it reaches a table."""


def check_finite(loss: torch.Tensor, step: int, desc: str, recipe: "Recipe") -> float:
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"{desc}: the loss is {value} at step {step} of {recipe.steps} (learning rate "
                               f"{lr_at(step, recipe):.3g}, peak {recipe.lr:g}); the run is stopped. Lower the "
                               "learning rate (recipe.lr) or check the data for NaN or infinite values")
    return value


@dataclass(frozen=True)
class Recipe:
    steps: int = 300  # optimisation steps
    batch_size: int = 128
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 0.05
    warmup: float = 0.1  # fraction of the steps spent warming up
    label_smoothing: float = 0.1
    pad: int = 2  # random-crop padding, in pixels (0: no crop)
    flip: bool = True  # random horizontal flip


def lr_at(step: int, recipe: Recipe) -> float:
    warm = max(1, int(recipe.warmup * recipe.steps))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def augment(x: torch.Tensor, recipe: Recipe, g: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, drawn per image from the generator: the crop's offsets
    (rows, then columns), then the flips. Two gathers of the padded batch, the flip folded into the column index
    (the same images as indexing the padded batch and flipping the crop, in half the time)."""
    B, C, H, W = x.shape
    p = recipe.pad
    if p:
        dy = torch.randint(0, 2 * p + 1, (B,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=g)
    flip = torch.rand(B, generator=g) < 0.5 if recipe.flip else None
    if not p and flip is None:
        return x
    cols = torch.arange(W).expand(B, W)  # (B, W): which column of the crop each output column reads
    if flip is not None:
        cols = torch.where(flip[:, None], W - 1 - cols, cols)
    if p:
        x = F.pad(x, (p, p, p, p))
        rows = (dy[:, None] + torch.arange(H)).to(x.device)  # (B, H)
        x = x.gather(2, rows[:, None, :, None].expand(B, C, H, x.shape[3]))  # (B, C, H, W + 2p): rows cropped
        cols = cols + dx[:, None]
    return x.gather(3, cols.to(x.device)[:, None, None, :].expand(B, C, H, W))  # (B, C, H, W)


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, its fused kernel where the parameters' device has one (CPU and CUDA): the same update, one
    kernel over all parameters instead of a loop of small ones (measured on 2 CPU cores: the zero-shot CLIP's
    optimizer step 55 -> 7 ms, its 3.2M-entry token embedding dominating; the data-scale ViT 1.1x steps/s)."""
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, seed: int,
          desc: str = "train") -> dict:
    """Train on (images, labels) held in memory (N, C, H, W) for recipe.steps steps. Returns loss and time.

    Not channels_last on a CPU: with torch 2.14.1 it trains the data-scale ResNet 1.2-1.5x faster, but oneDNN
    corrupted the heap with 4-channel convolutions in that layout on one thread, and its BatchNorm is 10-70x less
    accurate there (4e-7 to 3e-6 relative, 4e-8 in the usual layout): enough to flip a ReLU unit sitting at zero,
    which moves the gradients 0.3-1.4% from float64's (the usual layout: within 1e-5; tests/test_train.py). Its
    convolutions are as accurate as the usual layout's."""
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n
                                                                and "cls_token" not in n)]
    opt = adamw([{"params": decay, "weight_decay": recipe.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.999))
    model.train()
    n = len(images)
    order, pos = torch.randperm(n, generator=g), 0
    start, losses = time.perf_counter(), []
    bar = tqdm(range(recipe.steps), desc=desc, unit="step", dynamic_ncols=True, leave=False)
    for step in bar:
        if pos + recipe.batch_size > n:  # a new epoch: reshuffle
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos: pos + min(recipe.batch_size, n)]
        pos += len(idx)
        x = augment(images[idx], recipe, g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(check_finite(loss, step, desc, recipe))
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    return {"final_loss": float(np.mean(losses[-20:])), "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits for every image, a batch at a time, in eval mode."""
    model.eval()
    return torch.cat([model(images[i: i + batch_size]) for i in range(0, len(images), batch_size)])


def flops_per_image(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def train_clip(model: nn.Module, images: torch.Tensor,
               captions: Callable[[torch.Tensor, torch.Generator], torch.Tensor], recipe: Recipe, seed: int,
               desc: str = "train clip") -> dict:
    """Contrastive training of a CLIP on (image, caption) pairs held in memory, with harness.clip_loss.

    captions(idx, generator) -> (B, L) token ids of one caption for each image idx (drawn afresh every step,
    so an image can be seen with several captions). The temperature is learned: logit_scale is a parameter
    (no weight decay), clamped at log 100 by the model. label_smoothing is unused here.
    """
    from ..reference.clip import clip_loss

    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not _no_decay(n)]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not _no_decay(n))]
    opt = adamw([{"params": decay, "weight_decay": recipe.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    n, device = len(images), images.device
    order, pos = torch.randperm(n, generator=g), 0
    start, losses = time.perf_counter(), []
    bar = tqdm(range(recipe.steps), desc=desc, unit="step", dynamic_ncols=True, leave=False)
    for step in bar:
        if pos + recipe.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos: pos + min(recipe.batch_size, n)]
        pos += len(idx)
        x = augment(images[idx], recipe, g)
        tokens = captions(idx, g).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = clip_loss(model.encode_image(x, normalize=True), model.encode_text(tokens, normalize=True),
                         model.scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clamp_logit_scale_()  # CLIP's clip at 100, as open_clip's training loop applies it
        losses.append(check_finite(loss, step, desc, recipe))
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{model.scale().item():.1f}")
    model.eval()
    return {"final_loss": float(np.mean(losses[-20:])), "train_seconds": time.perf_counter() - start,
            "logit_scale": model.scale().item(), "temperature": 1.0 / model.scale().item()}


def _no_decay(name: str) -> bool:
    """Embeddings, the [CLS] token and the temperature are not decayed (timm and open_clip do the same)."""
    return any(s in name for s in ("pos_embed", "cls_token", "positional_embedding", "token_embedding",
                                   "logit_scale"))

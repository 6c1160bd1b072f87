"""The zero-shot suite's own CLIP, trained from scratch: no pretrained CLIP is reachable offline, so the default
profile trains a small reference CLIP on Fashion-MNIST images paired with captions (training templates, the class
name and, each with a probability, two attributes measured on the image: small/large, dark/light), with
harness.clip_loss and a learned temperature. Trained once (deterministic) under the cache folder; the model
registry serves it as "zero_shot:ID" (harness.models.zero_shot) to any suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import data
from ..data.images import ImageData, balanced_subset, grayscale_tensors
from ..infra import cache, checkpoints, distributed
from ..reference.clip import CLIP, CLIPConfig, CLIPTextConfig, clip_vision_config
from .train import Recipe, train_clip


def tokenizer(context_length: int = 77):
    """open_clip's bundled CLIP BPE tokenizer (no download), padding/truncating to context_length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def attributes(x: torch.Tensor, thresholds: tuple[float, float] | None = None):
    """Per image: inked area and mean ink (28×28 grayscale in [0, 1]); words by the training medians."""
    ink = x > 0.1
    area = ink.float().mean(dim=(1, 2))
    darkness = (x * ink).sum(dim=(1, 2)) / ink.sum(dim=(1, 2)).clamp(min=1)
    thresholds = thresholds or (area.median().item(), darkness.median().item())
    size = np.where(area.numpy() > thresholds[0], "large", "small")
    tone = np.where(darkness.numpy() > thresholds[1], "light", "dark")  # Fashion-MNIST ink is bright on black
    return size, tone, thresholds


def raw(images: ImageData, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.pixels(idx).astype(np.float32) / 255.0)


def caption(template: str, classname: str, size: str = "", tone: str = "") -> str:
    words = " ".join(w for w in (size, tone, classname) if w)
    return template.format(words)


def build_clip(spec: dict) -> CLIP:
    m = spec["model"]
    return CLIP(CLIPConfig(embed_dim=m["embed_dim"], vision=clip_vision_config(num_classes=m["embed_dim"],
                                                                               **m["vision"]),
                           text=CLIPTextConfig(**m["text"])))


def checkpoint_path(cache_dir: Path, config: dict, device: torch.device | str) -> Path:
    """Where the trained CLIP is kept: by what it was trained on and with, and the kind of device."""
    return checkpoints.path(cache_dir, "zero_shot", {k: config[k] for k in ("classnames", "train")}, device)


def trained_clip(config: dict, device: torch.device, cache_dir: Path) -> tuple[CLIP, dict]:
    """The default profile's CLIP: trained once (deterministic) and saved, then read from its checkpoint.
    Under torchrun rank 0 trains (or reads the checkpoint) and broadcasts the weights to the other ranks."""
    path = checkpoint_path(cache_dir, config, device)
    loaded = _train_once(config, device, path) if distributed.is_main() or not distributed.active() else None
    if distributed.active():
        state = distributed.broadcast(None if loaded is None else
                                      ({k: v.cpu() for k, v in loaded[0].state_dict().items()}, loaded[1]))
        model = build_clip(config["train"])
        model.load_state_dict(state[0])
        loaded = model.to(device).eval(), state[1]
    model, meta = loaded
    return model.to(device).eval(), meta["stats"]


def _train_once(config: dict, device: torch.device, path: Path) -> tuple[CLIP, dict]:
    """(model, meta) from the checkpoint at `path`, training and saving it first when there is none (or a damaged
    one). A second run sharing the cache waits for the first to finish training instead of training again."""
    with cache.lock(path, "training the zero-shot CLIP"):
        loaded = checkpoints.load_or_none(path, lambda meta: build_clip(meta["config"]), device)
        if loaded is None:
            _train(config, device, path)
            loaded = checkpoints.load(path, lambda meta: build_clip(meta["config"]), device)
    return loaded


def _train(config: dict, device: torch.device, path: Path) -> None:
    spec = config["train"]
    d = spec["data"]
    train_set = data.load(d["name"], "train")
    idx = balanced_subset(train_set.labels, d["per_class"], seed=d["subset_seed"])
    x, _ = grayscale_tensors(train_set, idx, channels=3)
    labels = train_set.labels[idx]
    size, tone, thresholds = attributes(raw(train_set, idx))
    # every caption there can be, tokenised once: table[class, large?, light?, template, say size?, say tone?]
    tok = tokenizer(spec["model"]["text"]["context_length"])
    names, temps, p = config["classnames"], spec["templates"], spec["attribute_prob"]
    keys = [(c, a, b, t, s, u) for c in range(len(names)) for a in range(2) for b in range(2)
            for t in range(len(temps)) for s in range(2) for u in range(2)]
    table = tok([caption(temps[t], names[c], ("small", "large")[a] if s else "", ("dark", "light")[b] if u else "")
                 for c, a, b, t, s, u in keys]).reshape(len(names), 2, 2, len(temps), 2, 2, -1)
    label = torch.from_numpy(np.asarray(labels))
    large, light = torch.from_numpy(size == "large").long(), torch.from_numpy(tone == "light").long()

    def captions(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, len(temps), (len(batch),), generator=g)
        say_size = (torch.rand(len(batch), generator=g) < p).long()
        say_tone = (torch.rand(len(batch), generator=g) < p).long()
        return table[label[batch], large[batch], light[batch], t, say_size, say_tone]

    torch.manual_seed(spec["seed"])
    model = build_clip(spec).to(device)
    recipe = Recipe(label_smoothing=0.0, **spec["recipe"])
    stats = train_clip(model, x.to(device), captions, recipe, seed=spec["seed"], desc=f"train {spec['id']}")
    stats.update(train_images=len(idx), steps=recipe.steps, attribute_thresholds=list(thresholds),
                 params=sum(q.numel() for q in model.parameters()))
    checkpoints.save(path, model, {"stats": stats, "config": spec})

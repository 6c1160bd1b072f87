"""The zero-shot suite's own CLIP in the registry: "zero_shot:ID" (harness.models), ID its default profile's `train`
id (clip_fmnist): a small reference CLIP trained from scratch on Fashion-MNIST with captions (harness.methods.
clip_runs), read from its checkpoint under the cache folder, or trained there first when the suite has not run."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import GrayscaleTransform
from ..infra.suite import ConfigError
from ..methods.clip_runs import tokenizer, trained_clip
from . import Model, ModelSpec


def _config(suite_config) -> dict:
    """The zero_shot suite's default config, as the run gives it (harness.infra.suite.Context.suite_config)."""
    if suite_config is None:
        raise ConfigError("zero_shot: models are trained by the zero_shot suite, from its config: name them in "
                          "a suite run (python -m harness run) or pass suite_config=harness.run.suites.default_config")
    return suite_config("zero_shot")


def split(name: str, weights: str | None) -> tuple[str, str]:
    """Trained by a suite: the table says by which run."""
    return name, f"trained ({name})"


def check(spec: ModelSpec, suite_config=None) -> None:
    own = _config(suite_config)["train"]["id"]
    if spec.name != own:
        raise ConfigError(f"zero_shot model {spec.name!r}: the zero-shot suite trains one CLIP, zero_shot:{own}")


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir: Path | None = None,
         suite_config=None) -> Model:
    if cache_dir is None:
        raise ValueError(f"the zero-shot suite's CLIP {spec.name!r} needs a cache folder (its checkpoint lives "
                         "there): run without --no-cache")
    config = _config(suite_config)
    model, _ = trained_clip(config, torch.device(device), Path(cache_dir))
    size = config["train"]["model"]["vision"]["image_size"]
    return Model(spec, "zero_shot", model, model.encode_image, GrayscaleTransform(channels=3),
                 image_tower=model.visual, input_size=(3, size, size), encode_text=model.encode_text,
                 tokenizer=tokenizer(config["train"]["model"]["text"]["context_length"]),
                 training=training(config), training_seed=int(config["train"]["seed"]))


def training(config: dict) -> str:
    """The `training` field of the zero-shot suite's CLIP's rows: the configuration it was trained from."""
    return f"zero_shot:{config['train']['id']}"

"""Models the data-scale suite trains, in the registry: "data_scale:ARCH:PER_CLASS:SEED" (harness.models), read from
the run's checkpoint under the cache folder, or trained there first (the same deterministic run) when the suite
has not run. Their preprocessing is the suite's: 28×28 grayscale, normalised with Fashion-MNIST's statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import GrayscaleTransform
from ..infra.suite import ConfigError
from ..methods.scale_runs import trained
from . import Model, ModelSpec, closest
from .timm import features


def _config(suite_config) -> dict:
    """The data_scale suite's default config, as the run gives it (harness.infra.suite.Context.suite_config)."""
    if suite_config is None:
        raise ConfigError("data_scale: models are trained by the data_scale suite, from its config: name them in "
                          "a suite run (python -m harness run) or pass suite_config=harness.run.suites.default_config")
    return suite_config("data_scale")


def split(name: str, weights: str | None) -> tuple[str, str]:
    """Trained by a suite: the table says by which run."""
    return name, f"trained ({name})"


def check(spec: ModelSpec, suite_config=None) -> None:
    arch, *rest = spec.name.split(":")
    known = [a["id"] for a in _config(suite_config)["architectures"]]
    if arch not in known or len(rest) != 2 or not all(r.isdigit() for r in rest):
        raise ConfigError(f"data_scale model {spec.name!r}: expected ARCH:PER_CLASS:SEED with ARCH one of "
                          f"{', '.join(known)}{closest(arch, known)} (e.g. data_scale:vit_reference:1200:0)")


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir: Path | None = None,
         suite_config=None) -> Model:
    if cache_dir is None:
        raise ValueError(f"probing the data-scale model {spec.name!r} needs a cache folder (its checkpoint lives "
                         "there): run without --no-cache")
    module, _, _ = trained(spec.name, _config(suite_config), torch.device(device), Path(cache_dir))
    arch, per_class, run_seed = spec.name.split(":")
    return Model(spec, "data_scale", module, features(module), GrayscaleTransform(channels=1),
                 input_size=(1, 28, 28), training=training(arch, int(per_class)), training_seed=int(run_seed))


def training(arch: str, per_class: int) -> str:
    """The `training` field of a data-scale run's rows: its configuration, the seed aside."""
    return f"data_scale:{arch}:{per_class}"


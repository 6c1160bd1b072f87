"""timm models in the registry: "timm:NAME" (harness.models), and timm modules in memory (wrap)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import Model, ModelSpec, closest
from .weights import check_file

MODULES = ("timm.",)  # timm's nn.Modules, wrapped in memory


def create(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model in eval mode: "random" (timm's initialisation after torch.manual_seed(seed)), "pretrained"
    (timm's default tag, from the Hugging Face cache or the hub) or a local checkpoint file in timm's format."""
    import timm

    torch.manual_seed(seed)
    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if weights == "pretrained":
        try:
            return timm.create_model(name, pretrained=True, **kwargs).eval()
        except Exception as e:  # the hub is unreachable and nothing is cached
            raise RuntimeError(
                f"pretrained weights for timm model {name!r} could not be loaded ({type(e).__name__}: {e}). "
                "Either put them in the Hugging Face cache (run once online, or copy ~/.cache/huggingface), "
                "or pass a local checkpoint file as the weights (a path instead of 'pretrained')."
            ) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights {weights!r} are neither 'random', 'pretrained' nor an existing file")
    inputs.fingerprint(path)  # what a finished unit read (harness.infra.inputs)
    check_weights_file(name, str(path), {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"})
    # the file joins any preprocessing overlay the declaration gives (data_cfg)
    overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": str(path)}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def data_config(model: torch.nn.Module) -> dict:
    """The model's preprocessing facts from its pretrained_cfg, at the size it was built for: img_size=... changes
    the model (its patch embedding), not its pretrained_cfg."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *size)
    return cfg


def transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (resize, crop, normalise) from its pretrained_cfg."""
    import timm.data

    return timm.data.create_transform(**data_config(model))


def features(model: torch.nn.Module):
    """The pre-logits features: what a linear probe reads."""
    return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)


def check(spec: ModelSpec) -> None:
    import timm

    if not timm.is_model(spec.name):
        raise ConfigError(f"timm has no model {spec.name!r}{closest(spec.name, timm.list_models())}; "
                          "timm.list_models('*pattern*') lists them")
    if spec.weights in ("random", "pretrained"):
        return
    if not Path(spec.weights).is_file():
        raise ConfigError(f"weights {spec.weights!r} for timm model {spec.name!r} are neither 'random', 'pretrained' "
                          "nor an existing file")
    check_weights_file(spec.name, spec.weights, spec.kwargs)


def check_weights_file(name: str, weights: str, kwargs: dict) -> None:
    """A timm-format file holds exactly the model's tensors: timm loads it strictly, except where the declaration
    asks for another classifier (num_classes), when timm drops the file's head and loads the rest without checking
    (timm.models._builder.load_pretrained): here every tensor but the head's must be there."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    head = tuple(f"{h}." for h in heads) if "num_classes" in kwargs else ()
    check_file(weights, f"timm model {name!r}", model, strict=True, head=head)


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Model:
    kwargs = dict(spec.kwargs)
    if spec.data_cfg:
        kwargs["pretrained_cfg_overlay"] = dict(spec.data_cfg)
    return wrap(create(spec.name, spec.weights, seed=seed, **kwargs).to(device), spec)


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    """A timm model's Model: its pre-logits features and its own preprocessing (data_config)."""
    return Model(spec, "timm", module, features(module), transform(module), input_size=input_size(module))


def input_size(module: torch.nn.Module) -> tuple[int, int, int]:
    return tuple(data_config(module)["input_size"])


def reference(model: Model) -> Model:
    from ..convert import from_timm

    ref = from_timm(model.module)
    return Model(model.spec, "reference", ref, features(ref), model.transform, input_size=model.input_size,
                 weights_of=model)


def save_random(spec: ModelSpec, path: Path) -> Path:
    from safetensors.torch import save_file

    module = create(spec.name, "random", seed=0, **spec.kwargs)
    path = Path(f"{path}.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path

"""timm models in the registry (harness.models), and timm modules in memory (wrap):

    timm:NAME                      timm, by name (a pretrained tag may be part of it: timm:resnet50.a1_in1k);
                                   random weights unless the declaration names them ("pretrained", a file)
    timm:hf-hub:ORG/NAME[@REV]     a hub repo in timm's layout (config.json, model.safetensors), its own weights,
                                   from the Hugging Face cache (online: the hub), at a revision when one is named

Loads are timm's strict ones. timm stops checking when the declaration asks for another classifier
(`num_classes`: it drops the checkpoint's head and loads the rest with strict=False), so here the model is built
with the checkpoint's own head, loaded strictly, and its classifier then replaced (reset_classifier): every tensor
but the head's is the checkpoint's, or the load is refused naming what is missing."""

from __future__ import annotations

from pathlib import Path

import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import Model, ModelSpec, closest
from .weights import check_file, fingerprint_hub, hub_file, read_weight_shapes

MODULES = ("timm.",)  # timm's nn.Modules, wrapped in memory
HUB = "hf-hub:"


def split(name: str, weights: str | None) -> tuple[str, str]:
    """timm:hf-hub:ORG/NAME carries its repo's weights ("pretrained"); timm:NAME random weights by default."""
    return name, ("pretrained" if name.startswith(HUB) else weights or "random")


def _head(module_or_cfg) -> tuple[str, ...]:
    heads = module_or_cfg.get("classifier") or ()
    return (heads,) if isinstance(heads, str) else tuple(heads)


def create(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model in eval mode: "random" (timm's initialisation after torch.manual_seed(seed)), "pretrained"
    (timm's default tag, from the Hugging Face cache or the hub) or a local checkpoint file in timm's format."""
    import timm

    torch.manual_seed(seed)
    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    wanted = kwargs.pop("num_classes", None)  # another classifier: built after a strict load (module docstring)
    if weights == "pretrained":
        if name.startswith(HUB):  # what a finished unit read: this snapshot, and the ref that named it
            fingerprint_hub(hub_files(name)[1], name.partition("@")[2] or None)
        try:
            model = timm.create_model(name, pretrained=True, **kwargs).eval()
        except RuntimeError as e:  # load_state_dict(strict=True): the tensors that are missing or left over
            raise ConfigError(f"timm model {name!r} does not load exactly: " + " ".join(str(e).split())[:600]) \
                from None
        except Exception as e:  # the hub is unreachable and nothing is cached
            raise RuntimeError(
                f"pretrained weights for timm model {name!r} could not be loaded ({type(e).__name__}: {e}). "
                "Either put them in the Hugging Face cache (run once online, or copy ~/.cache/huggingface), "
                "or pass a local checkpoint file as the weights (a path instead of 'pretrained')."
            ) from e
        return _reset(model, wanted)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights {weights!r} are neither 'random', 'pretrained' nor an existing file")
    inputs.fingerprint(path)  # what a finished unit read (harness.infra.inputs)
    # the file joins any preprocessing overlay the declaration gives (data_cfg), with the number of classes its
    # head has (none: 0), so that timm loads it strictly whatever num_classes the declaration asks for
    overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": str(path)}
    with torch.device("meta"):
        cfg = timm.create_model(name, pretrained=False, **kwargs).pretrained_cfg
    shapes = read_weight_shapes(path)
    heads = [shapes.get(f"{h}.weight") for h in _head(cfg)]
    n_file = heads[0][0] if heads and heads[0] else 0
    try:
        model = timm.create_model(name, pretrained=True, num_classes=n_file,
                                  pretrained_cfg_overlay={**overlay, "num_classes": n_file}, **kwargs).eval()
    except RuntimeError as e:  # load_state_dict(strict=True), after timm's own conversion of the file
        raise ConfigError(f"weights {path} do not load exactly into timm model {name!r}: "
                          + " ".join(str(e).split())[:600]) from None
    return _reset(model, wanted)


def _reset(model: torch.nn.Module, num_classes: int | None) -> torch.nn.Module:
    """The model with the classifier the declaration asked for (num_classes), a fresh one where it differs."""
    if num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
        model.reset_classifier(num_classes)
    return model.eval()


def hub_files(name: str) -> tuple[str, str]:
    """(config.json, weights file) of a timm hub repo, from the cache (the hub when online); ConfigError naming
    what is missing."""
    repo, _, revision = name.removeprefix(HUB).partition("@")
    found = []
    for options in (("config.json",), ("model.safetensors", "pytorch_model.bin")):
        path = hub_file(repo, options, revision or None)
        if path is None:
            raise ConfigError(f"timm model {name!r}: {' or '.join(options)} of {repo} is not in the Hugging Face "
                              "cache" + (f" at revision {revision!r}" if revision else "") + "; fill it once online "
                              "(HF_HUB_OFFLINE=0), or copy ~/.cache/huggingface")
        found.append(path)
    return found[0], found[1]


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

    if "revision" in spec.extra:
        raise ConfigError(f"timm model {spec.name!r}: name a revision in the name, timm:hf-hub:ORG/NAME@REVISION "
                          "(a \"revision\" key would be ignored)")
    if spec.name.startswith(HUB):
        if spec.weights != "pretrained":
            raise ConfigError(f"timm model {spec.name!r} carries its repo's weights: weights {spec.weights!r} would "
                              "be ignored (for a file, name timm:NAME with the file as its weights)")
        hub_files(spec.name)
        return
    if not timm.is_model(spec.name):
        raise ConfigError(f"timm has no model {spec.name!r}{closest(spec.name, timm.list_models())}; "
                          "timm.list_models('*pattern*') lists them")
    if spec.weights in ("random", "pretrained"):
        return
    if not Path(spec.weights).is_file():
        raise ConfigError(f"weights {spec.weights!r} for timm model {spec.name!r} are neither 'random', 'pretrained' "
                          "nor an existing file")
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}  # the file's head is its own (create)
    with torch.device("meta"):
        model = timm.create_model(spec.name, pretrained=False, **kwargs)
    heads = tuple(f"{h}." for h in _head(model.pretrained_cfg))
    # the rest is timm's strict load (create); a head of the file's own size is built, then replaced
    check_file(spec.weights, f"timm model {spec.name!r}", model, skip=heads)


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

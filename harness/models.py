"""Library models, created the same way everywhere: timm by name, random or pretrained weights.

Weights are named by a string:
  "random"      timm's own initialisation after torch.manual_seed(seed)
  "pretrained"  timm's default pretrained tag, from the Hugging Face cache (or the hub when online)
  a file path   a local checkpoint in timm's format (loaded through pretrained_cfg_overlay=dict(file=...))
A weight file is loaded by timm's and open_clip's own loaders, which refuse a pickle that is not weights-only
(torch.load(weights_only=True)); where the harness reads one itself (check_weights, before a run), it does the
same and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def load_timm(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model in eval mode with the weights named by `weights` (see the module docstring)."""
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
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


def photo(name: str) -> Image.Image:
    """One of the real colour photographs shipped inside scikit-image and scikit-learn (no download)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}: choose from {', '.join(PHOTOS)}")
    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3])


def timm_transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (resize, crop, normalise) from its pretrained_cfg."""
    import timm.data

    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def image_batch(transform, image_size: int, photos: list[str], n_random: int, seed: int) -> torch.Tensor:
    """Real photographs through a model's preprocessing, then standard-normal tensors: (B, 3, H, W) float64."""
    images = [transform(photo(p)) for p in photos]
    g = torch.Generator().manual_seed(seed)
    images += list(torch.randn(n_random, 3, image_size, image_size, generator=g))
    return torch.stack(images).double()


def load_open_clip(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """An open_clip model in eval mode. `weights`: "random", a pretrained tag ("openai",
    "laion2b_s34b_b79k", ...: from the Hugging Face cache, or the hub when online) or a local checkpoint file."""
    import open_clip

    torch.manual_seed(seed)
    kwargs = _open_clip_kwargs(name, kwargs)
    if weights == "random":
        return open_clip.create_model(name, pretrained=None, **kwargs).eval()
    try:
        return open_clip.create_model(name, pretrained=weights, **kwargs).eval()
    except Exception as e:
        raise RuntimeError(
            f"open_clip weights {weights!r} for {name!r} could not be loaded ({type(e).__name__}: {e}). "
            "Pass a pretrained tag that is in the Hugging Face cache (fill it once online), "
            "or the path of a local checkpoint file."
        ) from e


def _open_clip_kwargs(name: str, kwargs: dict) -> dict:
    """open_clip replaces a whole vision_cfg / text_cfg given to create_model; here a partial one is merged into
    the named model's own ({"vision_cfg": {"layers": 2}} shrinks the image tower and keeps the rest)."""
    import open_clip

    if not any(k in kwargs for k in ("vision_cfg", "text_cfg")):
        return kwargs
    base = open_clip.get_model_config(name)
    return {**kwargs, **{k: {**base[k], **kwargs[k]} for k in ("vision_cfg", "text_cfg") if k in kwargs}}


def open_clip_transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (open_clip's preprocess_cfg)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(model.visual, "preprocess_cfg", None) or {"size": model.visual.image_size}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def build_architecture(arch: dict) -> torch.nn.Module:
    """A model to train from scratch, from its declaration: {"kind": "reference_vit" | "reference_hybrid" |
    "timm_vit" | "resnet", "kwargs": {...}} (the data-scale suite's architectures; a hybrid is a reference ViT
    whose kwargs hold a "stem": StemConfig fields)."""
    kind, kw = arch["kind"], arch["kwargs"]
    if kind in ("reference_vit", "reference_hybrid"):
        from .reference.hybrid import StemConfig
        from .reference.vit import ViT, ViTConfig

        stem = kw.get("stem")
        if stem is not None:  # declared as JSON: lists become the config's tuples
            kw = {**kw, "stem": StemConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stem.items()})}
        return ViT(ViTConfig(**kw))
    if kind == "timm_vit":
        import timm.models.vision_transformer as tv

        return tv.VisionTransformer(**kw)
    if kind == "resnet":
        from .cnn import SmallResNet

        return SmallResNet(**kw)
    raise ValueError(f"unknown architecture kind {kind!r}: use reference_vit, reference_hybrid, timm_vit or resnet")


def _closest(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (closest known: {', '.join(close)})" if close else ""


def check_model(library: str, name: str) -> None:
    """ConfigError, before any work, for a model name the library does not know, with the closest names."""
    from .suite import ConfigError

    if library == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"timm has no model {name!r}{_closest(name, timm.list_models())}; "
                              "timm.list_models('*pattern*') lists them")
    elif library == "open_clip":
        import open_clip

        if name not in open_clip.list_models():
            raise ConfigError(f"open_clip has no model {name!r}{_closest(name, open_clip.list_models())}; "
                              "open_clip.list_models() lists them")
    else:
        raise ConfigError(f"unknown library {library!r} for model {name!r}: use 'timm' or 'open_clip'")


def read_weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a user's weight file without running code: safetensors headers, or torch.load with
    weights_only=True (a pickle holding anything but tensors and plain containers is refused, with why)."""
    from .suite import ConfigError

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:
            raise ConfigError(f"weights file {path} is not a readable safetensors file ({e})") from None
    import pickle

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) torch file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"weights file {path} is a pickle that is not weights-only: loading it would run code "
                          f"or build objects ({str(e).splitlines()[0][:200]}). The harness and timm/open_clip "
                          "load only tensors: re-save it as a state_dict (torch.save(model.state_dict(), path)) "
                          "or as safetensors, from a copy you trust") from None
    except Exception as e:
        raise ConfigError(f"weights file {path} cannot be read as a torch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "module"):  # the wrappers timm's and open_clip's loaders unwrap
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_weights(library: str, name: str, weights: str, kwargs: dict | None = None) -> None:
    """ConfigError, before any work, for weights that cannot be what the model needs: not 'random', a known tag
    or an existing file; or a file whose tensors belong to another architecture (no key in common, or a shape
    that differs; position embeddings may differ, the libraries resize them)."""
    from .suite import ConfigError

    kwargs = kwargs or {}
    if weights == "random" or (library == "timm" and weights == "pretrained"):
        return
    if library == "open_clip" and not Path(weights).exists():
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        if weights in tags:
            return
        raise ConfigError(f"weights {weights!r} for open_clip {name!r} are neither 'random', a pretrained tag "
                          f"({', '.join(tags) or 'none'}) nor an existing file")
    if not Path(weights).is_file():
        raise ConfigError(f"weights {weights!r} for {library} model {name!r} are neither 'random', 'pretrained' "
                          "nor an existing file")
    found = read_weight_shapes(weights)
    with torch.device("meta"):
        if library == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            import open_clip

            model = open_clip.create_model(name, pretrained=None, device="meta", **_open_clip_kwargs(name, kwargs))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    common = set(found) & set(expected)
    bad = [f"{k}: file {found[k]}, model {expected[k]}" for k in sorted(common)
           if found[k] != expected[k] and "pos" not in k]
    if not common or bad:
        raise ConfigError(f"weights file {weights} does not fit {library} model {name!r}: "
                          + (f"shapes differ ({'; '.join(bad[:3])})" if bad else
                             f"no tensor name in common (file has e.g. {', '.join(sorted(found)[:3])})")
                          + ". Is it a checkpoint of another architecture?")


def check_specs(specs: list[dict]) -> None:
    """check_model and check_weights for each declared model of a suite ({"library", "name", "weights", "kwargs"})."""
    for spec in specs:
        if spec["library"] in ("timm", "open_clip"):
            check_model(spec["library"], spec["name"])
            check_weights(spec["library"], spec["name"], spec.get("weights", "random"), spec.get("kwargs"))

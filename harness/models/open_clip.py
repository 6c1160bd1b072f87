"""open_clip models in the registry (harness.models):

    open_clip:ARCH                 an architecture open_clip knows, random weights (or a declaration's weights: a tag
                                   or a checkpoint file)
    open_clip:ARCH/PRETRAINED      ... with a pretrained tag, from the Hugging Face cache (online: the hub)
    open_clip:hf-hub:ORG/REPO      a hub repo in open_clip's layout (open_clip_config.json and its weights,
                                   open_clip_model.safetensors or open_clip_pytorch_model.bin), as open_clip names it

open_clip's own hf-hub loader builds the model with random weights, logging a warning, when the weights file cannot
be found; here a repo without one in the cache (offline) is refused before any work. Loads are open_clip's strict
ones (load_checkpoint, strict=True). A tokenizer from Hugging Face (the SigLIP family's) needs its files in the cache
too."""

from __future__ import annotations

from pathlib import Path

import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import Model, ModelSpec, closest
from .weights import check_file, fingerprint_hub, hub_file

MODULES = ("open_clip.",)  # open_clip's nn.Modules, wrapped in memory


HUB = "hf-hub:"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # what open_clip looks for, in order


def split(name: str, weights: str | None) -> tuple[str, str]:
    """open_clip:ARCH/PRETRAINED names its weights tag; open_clip:hf-hub:ORG/REPO its repo's weights
    ("pretrained"); open_clip:ARCH random weights (or the suite's default)."""
    if name.startswith(HUB):
        return name, "pretrained"
    if "/" in name:
        name, _, tag = name.partition("/")
        return name, tag
    return name, weights or "random"


def create(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """An open_clip model in eval mode. `weights`: "random", a pretrained tag ("openai", "laion2b_s34b_b79k", ...:
    from the Hugging Face cache, or the hub when online) or a local checkpoint file."""
    import open_clip

    torch.manual_seed(seed)
    kwargs = merged_kwargs(name, kwargs)
    if name.startswith(HUB):
        fingerprint_hub(hub_weights(name))  # refused when absent: open_clip would go on with random weights
        return open_clip.create_model(name, **kwargs).eval()
    if weights == "random":
        return open_clip.create_model(name, pretrained=None, **kwargs).eval()
    if Path(weights).exists():
        inputs.fingerprint(weights)  # what a finished unit read (harness.infra.inputs)
    try:
        return open_clip.create_model(name, pretrained=weights, **kwargs).eval()
    except Exception as e:
        raise RuntimeError(
            f"open_clip weights {weights!r} for {name!r} could not be loaded ({type(e).__name__}: {e}). "
            "Pass a pretrained tag that is in the Hugging Face cache (fill it once online), "
            "or the path of a local checkpoint file."
        ) from e


def merged_kwargs(name: str, kwargs: dict) -> dict:
    """open_clip replaces a whole vision_cfg / text_cfg given to create_model; here a partial one is merged into
    the named model's own ({"vision_cfg": {"layers": 2}} shrinks the image tower and keeps the rest)."""
    import open_clip

    if not any(k in kwargs for k in ("vision_cfg", "text_cfg")):
        return kwargs
    base = open_clip.get_model_config(name)
    return {**kwargs, **{k: {**base[k], **kwargs[k]} for k in ("vision_cfg", "text_cfg") if k in kwargs}}


def transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (open_clip's preprocess_cfg)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(model.visual, "preprocess_cfg", None) or {"size": model.visual.image_size}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def hub_weights(name: str) -> str:
    """The weights file of an hf-hub repo in open_clip's layout, from the cache (the hub when online), after its
    open_clip_config.json; ConfigError naming what is missing."""
    repo = name.removeprefix(HUB)
    if "@" in repo:
        raise ConfigError(f"open_clip model {name!r}: open_clip's hf-hub names take no revision (it loads the repo's "
                          "main); for a pinned revision, name the weights file of that snapshot as the weights of "
                          "open_clip:ARCH")
    fix = "fill the cache once online (HF_HUB_OFFLINE=0), or copy ~/.cache/huggingface"
    if hub_file(repo, ("open_clip_config.json",)) is None:
        raise ConfigError(f"open_clip model {name!r}: open_clip_config.json of {repo} is not in the Hugging Face "
                          f"cache; {fix}")
    weights = hub_file(repo, HUB_WEIGHTS)
    if weights is not None:
        return weights
    raise ConfigError(f"open_clip model {name!r}: neither {' nor '.join(HUB_WEIGHTS)} of {repo} is in the Hugging "
                      f"Face cache (open_clip would build the model with random weights); {fix}")


def check(spec: ModelSpec) -> None:
    import open_clip

    if "revision" in spec.extra:
        raise ConfigError(f"open_clip model {spec.name!r}: open_clip loads no revision (a \"revision\" key would be "
                          "ignored); name the weights file of that snapshot as the weights of open_clip:ARCH")
    if spec.name.startswith(HUB):
        if spec.weights != "pretrained":
            raise ConfigError(f"open_clip model {spec.name!r} carries its repo's weights: weights {spec.weights!r} "
                              "would be ignored (for a file, name open_clip:ARCH with the file as its weights)")
        hub_weights(spec.name)
        return
    if spec.name not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {spec.name!r}{closest(spec.name, open_clip.list_models())}; "
                          "open_clip.list_models() lists them")
    if spec.weights == "random":
        return
    if not Path(spec.weights).exists():
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        if spec.weights in tags:
            return
        raise ConfigError(f"weights {spec.weights!r} for open_clip {spec.name!r} are neither 'random', a pretrained "
                          f"tag ({', '.join(tags) or 'none'}) nor an existing file")
    with torch.device("meta"):
        model = open_clip.create_model(spec.name, pretrained=None, device="meta",
                                       **merged_kwargs(spec.name, spec.kwargs))
    check_file(spec.weights, f"open_clip model {spec.name!r}", model)


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Model:
    import open_clip

    module = create(spec.name, spec.weights, seed=seed, **spec.kwargs).to(device)
    return wrap(module, spec, open_clip.get_tokenizer(spec.name))


def own_tokenizer(module: torch.nn.Module):
    """The tokenizer of an open_clip model in memory, where the model alone says which: CLIP's BPE
    (SimpleTokenizer) at the model's context length for a text tower of CLIP's 49,408-token vocabulary; None
    otherwise (a text tower from Hugging Face, SigLIP's: pass tokenizer=open_clip.get_tokenizer(NAME))."""
    import open_clip

    text = getattr(module, "text", None)
    vocab = getattr(module, "vocab_size", None) or getattr(text, "vocab_size", None)
    context = getattr(module, "context_length", None) or getattr(text, "context_length", None)
    if vocab == 49408 and context:
        return open_clip.tokenizer.SimpleTokenizer(context_length=context)
    return None


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    """An open_clip model's Model: encode_image / encode_text, its preprocess config, the tokenizer (given, or
    own_tokenizer)."""
    tok = tokenizer if tokenizer is not None else own_tokenizer(module)
    return Model(spec, "open_clip", module, module.encode_image, transform(module),
                 image_tower=module.visual, input_size=(3, *module.visual.image_size),
                 encode_text=module.encode_text if tok is not None else None, tokenizer=tok)


def reference(model: Model) -> Model:
    from ..convert import from_open_clip

    ref = from_open_clip(model.module)
    return Model(model.spec, "reference", ref, ref.encode_image, model.transform,
                 image_tower=ref.visual, input_size=model.input_size, encode_text=ref.encode_text,
                 tokenizer=model.tokenizer, weights_of=model)


def save_random(spec: ModelSpec, path: Path) -> Path:
    path = Path(f"{path}.pt")
    torch.save(create(spec.name, "random", seed=0, **spec.kwargs).state_dict(), path)
    return path

"""One registry for every model a suite, `compare`, `bench` or `plan` names: a string or a dict, the same everywhere.

    "timm:vit_small_patch16_224"          timm, by name (a pretrained tag may be part of it: "timm:resnet50.a1_in1k")
    "open_clip:ViT-B-32"                   an open_clip architecture, random weights
    "open_clip:ViT-B-32/openai"            ... with a pretrained tag (from the Hugging Face cache, or online)
    "data_scale:vit_reference:1200:0"      a model the data-scale suite trains (its unit), from its checkpoint
    "zero_shot:clip_fmnist"                the CLIP the zero-shot suite trains on Fashion-MNIST, likewise
    "hf:openai/clip-vit-base-patch32"      Hugging Face transformers: a hub id in the cache, or a save_pretrained
                                           folder ("hf:/ckpts/my-clip"); "hf:CLIPModel" with kwargs: random weights
    "python:mypkg.models:build"            your own: the nn.Module a factory returns (harness.models.python)
    {"model": "timm:vit_tiny_patch16_224", "id": "vit_ti4", "kwargs": {"img_size": 28},
     "weights": "random" | "pretrained" | TAG | FILE, "with_reference": true, "data_cfg": {...},
     "dtype": "float32" | "bfloat16" | "float16" | "float64"}

A dict holds the same string under "model" and what the string cannot say: `kwargs` for the library's create
function, `weights` ("random": the library's initialisation after torch.manual_seed(seed); "pretrained": timm's
default tag; an open_clip tag; or a local checkpoint file in the library's format), `with_reference` (a suite
evaluates the reference model converted from it too), `data_cfg` (timm's preprocessing facts: input_size, crop_pct,
mean, std, interpolation), `id` (its name in tables and cache keys; by default the string without its library,
with -bf16 / -fp16 / -fp64 after it for another dtype), `dtype` (the dtype its parameters are loaded in: float32
unless it says otherwise, whatever dtype the checkpoint was saved in — a float16 checkpoint is upcast exactly, and
`run --dtype` sets it for every model of a suite). Every row says the dtype its model's parameters had
(dtype_of), not the one asked for. Any other key (a published number, say) is kept in `extra` for the suite.

Loads are strict: a checkpoint with a tensor missing, left over or of another shape is refused before any work,
naming the tensors (transformers' loading report, timm's and open_clip's key sets against the file's, a python:
state_dict loaded with strict=True).

`resolve(spec)` gives one `Model`: the image encoder and its preprocessing, the text encoder and tokenizer of a
CLIP-like model, a weights identity for cache keys, and `reference(model)` the reference twin where a converter
exists. `wrap(module)` gives the same Model for a module in memory — through the same code: each library's `load`
builds its module and hands it to that library's `wrap`, so a module evaluated in memory and the same module named
to the registry get the same preprocessing, tokenizer and features. A torch.compile'd module and a
DistributedDataParallel / DataParallel one are unwrapped to the module they wrap first.

Each library is one module of this package, registered in LIBRARIES, with the same functions: check(spec),
load(spec, ...), and where they apply wrap(module, spec, tokenizer), reference(model), has_reference(spec),
save_random(spec, path) and split(name, weights) (a weights tag in the name, the default weights); MODULES, the
module prefixes whose nn.Modules it wraps in memory (IN_MEMORY lists those libraries). Adding a library is adding a
module and its line in LIBRARIES.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn

from ..infra.suite import ConfigError
from ..methods.features import weights_hash  # noqa: F401  (the library modules' weights identity)


@dataclass(frozen=True)
class ModelSpec:
    library: str  # a key of LIBRARIES
    name: str  # what the library knows it by: "vit_tiny_patch16_224", "ViT-B-32", "vit_reference:1200:0", "pkg:fn"
    id: str  # its name in tables and cache keys
    weights: str = "random"
    kwargs: dict = field(default_factory=dict)
    with_reference: bool = False
    data_cfg: dict | None = None
    extra: dict = field(default_factory=dict)  # the declaration's other keys, for the suite (published numbers)
    dtype: str = "float32"  # the dtype its parameters are loaded in, whatever the checkpoint's (module docstring)

    @property
    def string(self) -> str:
        return f"{self.library}:{self.name}"


@dataclass
class Model:
    """A resolved model: what every suite needs of one, whichever library it comes from."""

    spec: ModelSpec
    library: str  # "timm", "open_clip", "hf", "data_scale", "python", or "reference" for a converted twin
    module: nn.Module
    encode_image: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, D) features
    transform: Callable  # PIL image -> tensor: the model's own preprocessing
    image_tower: nn.Module | None = None  # the module whose forward the image benchmark times (the model itself,
    # or a CLIP's visual tower); None: module
    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W) its preprocessing gives
    encode_text: Callable[[torch.Tensor], torch.Tensor] | None = None  # tokens -> (B, D): a CLIP-like model
    tokenizer: Callable | None = None  # list of texts -> tokens
    weights_of: Model | None = None  # a converted twin carries the weights of this model
    # weights a suite trained: the training run's configuration (its seed aside) and its seed; None: fixed weights
    # (a tag, a file, a seeded initialisation). The regression gate judges trained rows by seed (harness.tools.diff)
    training: str | None = None
    training_seed: int | None = None
    # what else changes its features besides its id and weights (an hf: backbone's declared "features"): part of
    # the feature-cache key
    variant: str = ""

    def __post_init__(self):
        self.image_tower = self.module if self.image_tower is None else self.image_tower

    @functools.cached_property
    def weights(self) -> str:
        """A hash of the weights (part of feature-cache keys), computed when first asked for."""
        return self.weights_of.weights if self.weights_of is not None else weights_hash(self.module)

    @property
    def id(self) -> str:
        return self.spec.id if self.library != "reference" else f"{self.spec.id} (reference)"

    @property
    def clip_like(self) -> bool:
        return self.encode_text is not None and self.tokenizer is not None


def closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (closest known: {', '.join(close)})" if close else ""


# the registry: a library's prefix -> its module (imported when first used). In-memory modules are wrapped by the
# first library whose MODULES prefixes their class's module; "python" takes any other nn.Module
LIBRARIES = {"timm": "harness.models.timm", "open_clip": "harness.models.open_clip", "hf": "harness.models.hf",
             "data_scale": "harness.models.data_scale", "zero_shot": "harness.models.zero_shot",
             "reference": "harness.models.from_scratch", "python": "harness.models.python"}
NAMED = ("timm", "open_clip", "hf", "data_scale", "zero_shot", "python")  # the prefixes a declaration may name
IN_MEMORY = ("timm", "open_clip", "hf", "reference")  # the libraries with MODULES, tried in this order
SPEC_KEYS = ("model", "id", "weights", "kwargs", "with_reference", "data_cfg", "dtype")
ID_SUFFIX = {"bfloat16": "-bf16", "float16": "-fp16", "float64": "-fp64"}  # a default id's mark of its dtype
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def library(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(LIBRARIES[name])


def parse(spec: str | dict | ModelSpec, weights: str | None = None) -> ModelSpec:
    """A declaration (module docstring) as a ModelSpec; `weights` is the default where the declaration names none
    (a suite's "weights": "pretrained", say). A string without a known library, or an old-style dict, is refused
    with the form to use."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise ConfigError(f"model {spec!r}: name a model as 'LIBRARY:NAME' ({', '.join(NAMED)}), e.g. "
                          "'timm:vit_tiny_patch16_224' or 'open_clip:ViT-B-32/openai', or as a dict "
                          "{\"model\": \"timm:vit_tiny_patch16_224\", \"kwargs\": {...}, \"weights\": ...}")
    prefix, sep, name = spec["model"].partition(":")
    if not sep or prefix not in NAMED or not name:
        raise ConfigError(f"model {spec['model']!r}: expected 'LIBRARY:NAME' with LIBRARY one of "
                          f"{', '.join(NAMED)} (your own model: 'python:MODULE:FACTORY')")
    lib = library(prefix)
    # a library may read a weights tag out of the name (open_clip:ARCH/TAG) and say what its weights default to
    name, default = lib.split(name, weights) if hasattr(lib, "split") else (name, weights or "random")
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"model {spec['model']!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    # a default id says what else a declaration chose (two declarations of one checkpoint stay two rows)
    chosen = "".join(f"@{spec['revision']}" if k == "revision" else f"[{spec[k]}]"
                     for k in ("revision", "features") if k in spec)
    ident = spec.get("id") or (spec["model"].partition(":")[2] + chosen + ID_SUFFIX.get(dtype, ""))
    return ModelSpec(prefix, name, ident, spec.get("weights", default), dict(spec.get("kwargs") or {}),
                     bool(spec.get("with_reference", False)), spec.get("data_cfg"),
                     {k: v for k, v in spec.items() if k not in SPEC_KEYS}, dtype)


def library_of(spec: ModelSpec) -> ModuleType:
    return library(spec.library)


def unwrap(module: nn.Module) -> nn.Module:
    """The module a torch.compile'd module (OptimizedModule) or a DistributedDataParallel / DataParallel wrapper
    wraps, however deep."""
    while True:
        if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            return module


def wrap(module: nn.Module, tokenizer: Callable | None = None) -> Model:
    """The Model of a module in memory, read as its library's registry reads it (module docstring): a timm model
    with its pretrained_cfg's preprocessing at the size it was built for, an open_clip CLIP with its preprocess
    config and BPE tokenizer, a transformers model with its checkpoint's processor and tokenizer, a reference ViT
    or CLIP, any other nn.Module by the python: rules. `tokenizer` replaces the one the library would give."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"a model in memory is an nn.Module, not a {type(module).__name__}")
    module = unwrap(module)
    kind = type(module).__module__
    name = next((n for n in IN_MEMORY if kind.startswith(library(n).MODULES)), "python")
    spec = ModelSpec(name, type(module).__name__, type(module).__name__, "in memory")
    return library(name).wrap(module, spec, tokenizer)


TRAINED = ("data_scale", "zero_shot")  # libraries of models a suite trains: built from that suite's config


def check(spec: str | dict | ModelSpec, weights: str | None = None, suite_config=None) -> ModelSpec:
    """The declaration parsed and checked before any work: a name its library knows (or the closest ones), weights
    that can be what it needs (a known tag, or a file of its architecture). `suite_config(name)`: a suite's
    default config, for the models a suite trains (the run's Context.suite_config)."""
    parsed = parse(spec, weights)
    extra = {"suite_config": suite_config} if parsed.library in TRAINED else {}
    library_of(parsed).check(parsed, **extra)
    return parsed


def resolve(spec: str | dict | ModelSpec, seed: int = 0, device: torch.device | str = "cpu",
            cache_dir: Path | None = None, weights: str | None = None, suite_config=None) -> Model:
    """The Model a declaration names, in eval mode on `device` (suite_config: as for check)."""
    parsed = parse(spec, weights)
    extra = {"suite_config": suite_config} if parsed.library in TRAINED else {}
    model = library_of(parsed).load(parsed, seed=seed, device=device, cache_dir=cache_dir, **extra)
    model.module.to(DTYPES[parsed.dtype])  # floating tensors only: integer buffers (position ids) stay
    return model


def dtype_of(model: Model) -> str:
    """The dtype a model runs in, read from its image tower's parameters (what a row's dtype column says)."""
    p = next((p for p in model.image_tower.parameters() if p.is_floating_point()), None)
    return str(p.dtype).removeprefix("torch.") if p is not None else "float32"


def reference(model: Model) -> Model:
    """The reference model carrying `model`'s weights, with its preprocessing (and tokenizer), where a converter
    exists (timm's and open_clip's ViT families, transformers' CLIPModel and ViTModel); ValueError otherwise."""
    convert = getattr(library_of(model.spec), "reference", None)
    twin = convert(model) if convert is not None and model.library != "reference" else None
    if twin is None:
        raise ValueError(f"no reference converter for {model.spec.string}: with_reference works for timm and "
                         "open_clip ViTs and transformers' CLIPModel and ViTModel")
    twin.training, twin.training_seed = model.training, model.training_seed
    return twin


def has_reference(spec: str | dict | ModelSpec) -> bool:
    """Whether the library has a converter to the reference implementations (reference(model)) for this model
    (a library may say per model: transformers' CLIPModel and ViTModel convert, its other classes do not)."""
    parsed = parse(spec)
    library = library_of(parsed)
    per_model = getattr(library, "has_reference", None)
    return hasattr(library, "reference") and (per_model is None or per_model(parsed))


def savable(spec: str | dict | ModelSpec) -> bool:
    """Whether the library can write a checkpoint of the model's initialisation (save_random)."""
    return hasattr(library_of(parse(spec)), "save_random")


def save_random(spec: str | dict | ModelSpec, path: Path) -> Path:
    """A checkpoint of the model's own initialisation (seed 0) in its library's format, for a rehearsal of the
    full profile: weights files that load exactly as real ones would."""
    parsed = parse(spec)
    return library_of(parsed).save_random(parsed, Path(path))

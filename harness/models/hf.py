"""Hugging Face transformers models in the registry: "hf:ID_OR_FOLDER" (harness.models).

ID_OR_FOLDER is a hub id found in the Hugging Face cache (offline; online when HF_HUB_OFFLINE=0) or a folder that
`save_pretrained` wrote (config.json, the weights, preprocessor_config.json and, for a CLIP-like model, the
tokenizer's files). "hf:ID@REVISION" (or the declaration's "revision") pins a revision: a commit, branch or tag.

The model class is the checkpoint's own: the first of config.architectures (the class save_pretrained was called
on), or for a config without one its model_type's base class. ARCHITECTURES lists the accepted classes:

  CLIPModel, SiglipModel          zero_shot and linear_probe: get_image_features / get_text_features (SigLIP's
                                  ranking is the cosine's; logit_scale and logit_bias only score pairs)
  CLIPVisionModelWithProjection   linear_probe: image_embeds, the projected CLIP embedding it was published for
  CLIPVisionModel, SiglipVisionModel   the image towers alone, their own pooler output
  ViTModel, ViTForImageClassification, DeiTModel, DeiTForImageClassification(WithTeacher)
                                  linear_probe: the [CLS] token after the final LayerNorm (what the
                                  image-classification head reads; ViTModel's tanh pooler is a pretraining head and
                                  is not loaded). A distilled DeiT's own classifier averages a head on [CLS] and one
                                  on the distillation token: "features": "cls+distillation" gives both tokens
                                  concatenated (a linear probe on them can express that classifier)
  Dinov2Model, Dinov2ForImageClassification
                                  linear_probe: the pooler output (the [CLS] token after the final LayerNorm), by
                                  default; "features": "cls+mean_patch" gives [CLS] concatenated with the mean patch
                                  token, what Dinov2ForImageClassification and DINOv2's linear evaluation read
                                  (probe accuracy on the default sits below DINOv2's published linear numbers)

A classification checkpoint loads its backbone: the head's tensors (classifier.*) are the only ones left out.
A text tower alone (CLIPTextModel, ...), Siglip2Model (its NaFlex processor cuts variable-resolution patch
sequences, which the harness's fixed-size image pipeline does not carry) and any other class are refused by name
before any work; so is a repo whose config needs trust_remote_code, and a timm or open_clip repo (named with the
registry that reads it).

Loads are strict and in float32 unless the declaration's dtype says otherwise (transformers 5 would load the
config's dtype): any tensor the loading report calls missing, mismatched or unexpected (beyond a head the class
leaves out) refuses the model, naming the tensors. A checkpoint's `kwargs` and `data_cfg` are refused (its config
and its processor say both); kwargs build a random model from a class name ("hf:CLIPModel").

Preprocessing is the checkpoint's own image processor, computed as transformers' default (torchvision) backend
computes it: ProcessorTransform, whose pixel values equal the processor's through the suites' data path (odd sizes,
RGBA, grayscale and palette images; tests/test_hf_strict.py). Only the processor classes in PROCESSORS are
accepted: the ones whose rules it replicates exactly; any other (ConvNextImageProcessor's crop_pct, say) is refused
by name. Text goes through the checkpoint's own tokenizer, padded to its maximum length as the model was trained
(SigLIP's tokenizer must pad to 64: with dynamic padding its embeddings differ). SiglipTokenizer lower-cases and
strips punctuation itself, as its processor does; a SigLIP 2 checkpoint with a fixed resolution loads as model type
siglip with a Gemma tokenizer, which does neither, so the harness canonicalises its texts first (lower case,
punctuation removed), as open_clip 3.3's ViT-*-SigLIP2 configs do ("tokenizer_kwargs": {"clean": "canonicalize"}),
the cleaning of big_vision's SigLIP 2 evaluation.

With weights "random" the name may be a model class instead ("hf:CLIPModel", "hf:ViTModel", ...), its config from
the declaration's kwargs: random weights of a known shape, as "open_clip:ViT-B-32" gives them (the agreement suite's
rows). Such a CLIPModel's tokenizer is open_clip's (the same BPE vocabulary, end-of-text the highest id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import DTYPES, Model, ModelSpec
from .weights import fingerprint_hub, hub_file


@dataclass(frozen=True)
class Arch:
    cls: str  # the transformers class loaded
    kind: str  # "clip" (two towers) or "image" (an image backbone)
    features: tuple[str, ...] = ()  # an image backbone's feature choices ("features"), the default first
    dropped: tuple[str, ...] = ()  # prefixes of checkpoint tensors the loaded class leaves out: a head


HEAD = ("classifier.",)
ARCHITECTURES = {
    "CLIPModel": Arch("CLIPModel", "clip"),
    "SiglipModel": Arch("SiglipModel", "clip"),
    "CLIPVisionModel": Arch("CLIPVisionModel", "image", ("pooler",)),
    "CLIPVisionModelWithProjection": Arch("CLIPVisionModelWithProjection", "image", ("image_embeds",)),
    "SiglipVisionModel": Arch("SiglipVisionModel", "image", ("pooler",)),
    "ViTModel": Arch("ViTModel", "image", ("cls",), ("pooler.",)),
    "ViTForImageClassification": Arch("ViTModel", "image", ("cls",), HEAD),
    "DeiTModel": Arch("DeiTModel", "image", ("cls", "cls+distillation"), ("pooler.",)),
    "DeiTForImageClassification": Arch("DeiTModel", "image", ("cls", "cls+distillation"), HEAD),
    "DeiTForImageClassificationWithTeacher": Arch("DeiTModel", "image", ("cls", "cls+distillation"),
                                                  ("cls_classifier.", "distillation_classifier.")),
    "Dinov2Model": Arch("Dinov2Model", "image", ("pooler", "cls+mean_patch")),
    "Dinov2ForImageClassification": Arch("Dinov2Model", "image", ("pooler", "cls+mean_patch"), HEAD),
}
# a config without architectures (built from a config alone): its model type's base class
BASE = {"clip": "CLIPModel", "siglip": "SiglipModel", "vit": "ViTModel", "deit": "DeiTModel",
        "dinov2": "Dinov2Model", "clip_vision_model": "CLIPVisionModel", "siglip_vision_model": "SiglipVisionModel"}
TEXT_ONLY = ("CLIPTextModel", "CLIPTextModelWithProjection", "SiglipTextModel", "Siglip2TextModel")
REFUSED = {
    "siglip2": "Siglip2Model's NaFlex processor gives variable-resolution patch sequences (pixel_attention_mask, "
               "spatial_shapes), which the harness's fixed-size image pipeline does not carry",
}
# the image processors ProcessorTransform replicates exactly (tests/test_hf_strict.py runs each beside its class)
PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "ViTImageProcessor", "DeiTImageProcessor",
              "BitImageProcessor")
POOLING = ("ViTModel", "DeiTModel")  # loaded without their tanh pooler (add_pooling_layer=False)
# the classes a random model may be built from by name ("hf:CLIPModel")
CLASSES = {cls: model_type for model_type, cls in BASE.items()} | {"CLIPVisionModelWithProjection":
                                                                  "clip_vision_model"}
MODULES = ("transformers.", "harness.models.hf")  # transformers' models (and this module's wrappers) in memory


def split(name: str, weights: str | None) -> tuple[str, str]:
    """A checkpoint's own weights by default; a class name ("hf:CLIPModel") builds random ones."""
    return name, "random" if is_class_name(name) else (weights or "pretrained")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("hf: models need transformers: pip install 'vitclip-harness[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bars: one model, no long work
    return transformers


def is_class_name(name: str) -> bool:
    return name in CLASSES


def source(spec: ModelSpec) -> tuple[str, str | None]:
    """(a folder or a hub id, the revision): "ID@REVISION" or the declaration's "revision" pins one."""
    given = spec.extra.get("revision")
    repo, sep, revision = spec.name.partition("@")
    if Path(spec.name).is_dir():
        repo, sep, revision = spec.name, "", ""
    if sep and given is not None and given != revision:
        raise ConfigError(f"hf model {spec.name!r} names revision {revision!r} and its declaration {given!r}: "
                          "name one")
    revision = revision or given
    if revision and Path(repo).is_dir():  # transformers would load the folder as it is
        raise ConfigError(f"hf model {spec.name!r}: {repo} is a local folder, which has no revisions (a hub id "
                          "with a revision is read from the Hugging Face cache; run from another folder, or name "
                          "the snapshot's folder)")
    return repo, revision


def _repo_json(spec: ModelSpec, filename: str) -> dict | None:
    """A JSON file of the checkpoint (its folder, or the hub cache; the hub when online), or None."""
    repo, revision = source(spec)
    if Path(repo).is_dir():
        path = Path(repo) / filename
    else:
        found = hub_file(repo, (filename,), revision)
        if found is None:
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _snapshot(repo: str, revision: str | None) -> str:
    """The folder of the snapshot a hub id (at a revision) resolves to in the cache: what its files are read from."""
    from huggingface_hub import hf_hub_download

    return str(Path(hf_hub_download(repo, "config.json", revision=revision)).parent)


def _diagnosed(spec: ModelSpec) -> None:
    """ConfigError for a checkpoint the hf: registry cannot read, naming what reads it: a timm or an open_clip
    repo, or a config whose code lives in the repo (trust_remote_code)."""
    repo, _ = source(spec)
    cfg = _repo_json(spec, "config.json")
    hub = not Path(repo).is_dir()
    if cfg is None and _repo_json(spec, "open_clip_config.json") is not None:
        raise ConfigError(f"hf model {spec.name!r} is an open_clip checkpoint (open_clip_config.json, no transformers "
                          "config.json): name it " + (f"open_clip:hf-hub:{repo}" if hub else
                                                      "open_clip:ARCH with its weights file as the weights"))
    if cfg is not None and "model_type" not in cfg and ("architecture" in cfg or "pretrained_cfg" in cfg):
        arch = cfg.get("architecture", "?")
        raise ConfigError(f"hf model {spec.name!r} is a timm checkpoint (its config.json names timm architecture "
                          f"{arch!r}): name it " + (f"timm:hf-hub:{repo}" if hub else
                                                    f"timm:{arch} with its weights file as the weights"))
    if cfg is not None and cfg.get("auto_map"):
        raise ConfigError(f"hf model {spec.name!r} needs trust_remote_code: its config maps to code kept in the repo "
                          f"({', '.join(sorted(cfg['auto_map']))}), which the harness does not run; wrap the model "
                          "you load yourself with harness.evaluate, or name it python:MODULE:FACTORY")


def config(spec: ModelSpec):
    """The checkpoint's config (offline: from the folder or the hub cache), or a class's config from kwargs."""
    tf = _transformers()
    if is_class_name(spec.name):
        cfg = tf.AutoConfig.for_model(CLASSES[spec.name], **spec.kwargs)
        cfg.architectures = [spec.name]
        return cfg
    _diagnosed(spec)
    repo, revision = source(spec)
    return _offline(lambda name: tf.AutoConfig.from_pretrained(name, revision=revision), spec,
                    "no transformers config.json found" + (f" at revision {revision!r}" if revision else ""),
                    "name a folder save_pretrained wrote, or a hub id in the Hugging Face cache (fill it once online, "
                    "or run with HF_HUB_OFFLINE=0)")


def _offline(load, spec: ModelSpec, problem: str, fix: str):
    """load(folder or hub id) (from the folder, or the hub cache offline), or ConfigError naming the problem and the
    fix."""
    try:
        return load(source(spec)[0])
    except Exception as e:
        raise ConfigError(f"hf model {spec.name!r}: {problem} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          f"{fix}") from None


def architecture(cfg) -> tuple[str, Arch]:
    """(the checkpoint's class, how it loads), or ConfigError naming a class that is not supported."""
    model_type = getattr(cfg, "model_type", None)
    if model_type in REFUSED:
        raise ConfigError(f"hf model type {model_type!r} is not supported: {REFUSED[model_type]}")
    listed = list(getattr(cfg, "architectures", None) or [])
    name = listed[0] if listed else BASE.get(model_type)
    known = ", ".join(ARCHITECTURES)
    if name in TEXT_ONLY:
        raise ConfigError(f"hf checkpoint class {name} is a text tower alone: the suites evaluate an image encoder "
                          f"(the hf: registry knows {known})")
    if name not in ARCHITECTURES:
        raise ConfigError(f"hf checkpoint class {name or 'unknown'} (model type {model_type!r}) is not supported: "
                          f"the hf: registry knows {known}")
    arch = ARCHITECTURES[name]
    expected = getattr(_transformers(), arch.cls).config_class.model_type
    if expected != model_type:
        raise ConfigError(f"hf checkpoint class {name} with a {model_type!r} config: {arch.cls} reads "
                          f"{expected!r} configs")
    return name, arch


def kind_of(cfg) -> tuple[str, str]:
    """(the transformers class loaded, kind)."""
    _, arch = architecture(cfg)
    return arch.cls, arch.kind


def feature_choice(spec: ModelSpec, cfg) -> str | None:
    """The declared "features" of an image backbone (its first choice by default); ConfigError for another."""
    name, arch = architecture(cfg)
    chosen = spec.extra.get("features")
    if arch.kind == "clip":
        if chosen is not None:
            raise ConfigError(f"hf model {spec.name!r} ({name}): \"features\" chooses an image backbone's "
                              "features; a CLIP-like model's are its embeddings")
        return None
    if chosen is None:
        return arch.features[0]
    if chosen not in arch.features:
        raise ConfigError(f"hf model {spec.name!r} ({name}): features {chosen!r} is not one of "
                          f"{', '.join(arch.features)}")
    return chosen


def check(spec: ModelSpec) -> None:
    """Before any work: a class name with random weights, or a checkpoint whose config is found and whose class is
    supported (with random weights, a checkpoint's config still gives the shape); no kwargs or data_cfg for a
    checkpoint (its config and processor say both)."""
    if is_class_name(spec.name) and spec.weights != "random":
        raise ConfigError(f"hf:{spec.name} names a model class: it builds random weights from kwargs (weights "
                          "'random'); name a folder or hub id for trained weights")
    if spec.weights not in ("random", "pretrained"):
        raise ConfigError(f"weights {spec.weights!r} for hf model {spec.name!r}: 'pretrained' (the checkpoint's own) "
                          "or 'random'; a checkpoint is a folder save_pretrained wrote, named as the model")
    if not is_class_name(spec.name) and spec.kwargs:
        raise ConfigError(f"hf model {spec.name!r}: kwargs {sorted(spec.kwargs)} would be ignored: a checkpoint's "
                          "config.json says its shape (kwargs build a random model from a class name, hf:CLIPModel)")
    if spec.data_cfg:
        raise ConfigError(f"hf model {spec.name!r}: data_cfg would be ignored: its preprocessing is its image "
                          "processor's (preprocessor_config.json)")
    cfg = config(spec)
    feature_choice(spec, cfg)
    if not is_class_name(spec.name):
        ProcessorTransform(image_processor(spec, cfg.model_type, _image_size(cfg)))  # refuses what it cannot do


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Model:
    tf = _transformers()
    check(spec)
    cfg = config(spec)
    _, arch = architecture(cfg)
    cls = getattr(tf, arch.cls)
    extra = {"add_pooling_layer": False} if arch.cls in POOLING else {}
    dtype = DTYPES[spec.dtype]  # not the config's (transformers 5's dtype="auto")
    torch.manual_seed(seed)
    if spec.weights == "random":
        module = cls._from_config(cfg, dtype=dtype, **extra)
    else:
        repo, revision = source(spec)
        # what a finished unit read (harness.infra.inputs): the folder, or the snapshot the cache resolves to
        if Path(repo).is_dir():
            inputs.fingerprint(repo)
        else:
            fingerprint_hub(_snapshot(repo, revision), revision)
        verbosity = tf.utils.logging.get_verbosity()
        tf.utils.logging.set_verbosity_error()  # its load report goes to strict(), which refuses or says nothing
        try:
            module, report = cls.from_pretrained(repo, revision=revision, dtype=dtype, output_loading_info=True,
                                                 **extra)
        finally:
            tf.utils.logging.set_verbosity(verbosity)
        strict(spec, report, arch)
    return _model(module.to(device).eval(), spec, cfg)


def strict(spec: ModelSpec, report: dict, arch: Arch) -> None:
    """ConfigError naming the tensors transformers' loading report found missing (left at random values),
    mismatched in shape or unexpected (beyond the head the class leaves out), or its errors."""
    problems = []
    for what, keys in (("missing (they would keep random values)", sorted(report.get("missing_keys") or ())),
                       ("of another shape", sorted(str(k[0]) for k in report.get("mismatched_keys") or ())),
                       ("unexpected", sorted(k for k in report.get("unexpected_keys") or ()
                                             if not k.startswith(arch.dropped))),
                       ("errors", [str(e) for e in report.get("error_msgs") or ()])):
        if keys:
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}")
    if problems:
        raise ConfigError(f"hf model {spec.name!r} does not load exactly into {arch.cls}: " + "; ".join(problems)
                          + ". Is the checkpoint complete, and of this class?")


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    """A transformers model in memory (or this module's TwoTowers / Backbone around one), read by its own class (a
    classification model by its backbone): its processor and tokenizer from the checkpoint it was loaded from
    (config.name_or_path: a folder, or a hub id in the cache), or for a model built from a config alone the
    processor transformers pairs with its type. Its features are the class's default ones. A model loaded at a
    revision does not say which (transformers 5 keeps no commit in its config): its processor and tokenizer are read
    at the cache's main — name it to the registry (hf:ID@REVISION), or pass transform= and tokenizer=."""
    if isinstance(module, (TwoTowers, Backbone)):
        module = module.hf
    cfg = module.config
    source = getattr(cfg, "name_or_path", "") or ""  # built from a config alone: its type's class name
    name = type(module).__name__
    arch = architecture(_listing(cfg, name))[1]
    if arch.cls != name:  # a classification model: its backbone (ViTForImageClassification.vit, ...)
        module = module.base_model
    spec = ModelSpec("hf", source or arch.cls, spec.id, "in memory")
    return _model(module, spec, cfg, tokenizer, arch, arch.features[0] if arch.features else None)


def _listing(cfg, name: str):
    """cfg as a config listing `name` as its class (what architecture() reads), the model's own left untouched."""
    import copy

    listed = copy.copy(cfg)
    listed.architectures = [name]
    return listed


def _model(module: torch.nn.Module, spec: ModelSpec, cfg, tokenizer=None, arch: Arch | None = None,
           features: str | None = None) -> Model:
    if arch is None:
        arch = architecture(cfg)[1]
        features = feature_choice(spec, cfg)
    image_size = _image_size(cfg)
    transform = ProcessorTransform(image_processor(spec, cfg.model_type, image_size))
    input_size = (3, *transform.output_size(image_size))
    if arch.kind == "clip":
        if tokenizer is None:
            tokenizer = Tokenizer(spec, cfg) if not is_class_name(spec.name) or cfg.model_type == "clip" else None
        towers = TwoTowers(module)
        return Model(spec, "hf", towers, towers.encode_image, transform, image_tower=module.vision_model,
                     input_size=input_size, encode_text=towers.encode_text if tokenizer else None,
                     tokenizer=tokenizer)
    backbone = Backbone(module, features)
    variant = "" if features == arch.features[0] else f"features={features}"  # part of feature-cache keys
    return Model(spec, "hf", backbone, backbone, transform, input_size=input_size, variant=variant)


def _image_size(cfg) -> int:
    vision = getattr(cfg, "vision_config", None) or cfg
    return int(vision.image_size)


class TwoTowers(torch.nn.Module):
    """A transformers CLIPModel / SiglipModel with open_clip's two comparison points, encode_image(x,
    normalize=False) and encode_text(tokens, normalize=False): what the zero-shot classifier builders (the
    harness's and open_clip's) call. `hf` is the transformers model itself."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x the tensor
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._pooled(self.hf.get_image_features(pixel_values=images))
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._pooled(self.hf.get_text_features(input_ids=tokens))
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


class Backbone(torch.nn.Module):
    """A transformers image backbone as a features function: forward(images) -> (B, D), by `features`:
      "cls"               the [CLS] token after the final LayerNorm (ViT, DeiT)
      "pooler"            the model's own pooler output (Dinov2: the LayerNormed [CLS]; the CLIP/SigLIP towers')
      "image_embeds"      CLIPVisionModelWithProjection's projected embedding
      "cls+mean_patch"    [CLS] and the mean patch token, concatenated (Dinov2ForImageClassification's input)
      "cls+distillation"  [CLS] and the distillation token, concatenated (what a distilled DeiT's two heads read)
    `hf` is the transformers model itself."""

    def __init__(self, hf: torch.nn.Module, features: str):
        super().__init__()
        self.hf, self.features = hf, features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=images)
        if self.features == "pooler":
            return out.pooler_output
        if self.features == "image_embeds":
            return out.image_embeds
        tokens = out.last_hidden_state  # (B, N, D), after the final LayerNorm
        if self.features == "cls":
            return tokens[:, 0]
        if self.features == "cls+mean_patch":
            return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
        return torch.cat([tokens[:, 0], tokens[:, 1]], dim=-1)  # cls+distillation


def transformers_model(model: Model) -> torch.nn.Module:
    """The transformers module of a resolved hf: model (inside its TwoTowers or Backbone)."""
    return model.module.hf


CONVERTIBLE = ("CLIPModel", "ViTModel")  # the classes harness.convert.hf turns into the reference


def has_reference(spec: ModelSpec) -> bool:
    return architecture(config(spec))[1].cls in CONVERTIBLE


def reference(model: Model) -> Model:
    """The reference CLIP or ViT carrying the model's weights, with its preprocessing and tokenizer."""
    from ..convert.hf import from_hf

    ref = from_hf(transformers_model(model))
    if model.clip_like:
        return Model(model.spec, "reference", ref, ref.encode_image, model.transform, image_tower=ref.visual,
                     input_size=model.input_size, encode_text=ref.encode_text, tokenizer=model.tokenizer,
                     weights_of=model)
    return Model(model.spec, "reference", ref, lambda x: ref.forward_head(ref.forward_features(x), pre_logits=True),
                 model.transform, input_size=model.input_size, weights_of=model)


# ---------------------------------------------------------------------------------------------- preprocessing


def image_processor(spec: ModelSpec, model_type: str, image_size: int):
    """The checkpoint's own image processor (preprocessor_config.json), or for a class built at random the
    processor transformers pairs with that model type, at the config's image size."""
    tf = _transformers()
    if not is_class_name(spec.name):
        revision = source(spec)[1]
        return _offline(lambda name: tf.AutoImageProcessor.from_pretrained(name, revision=revision), spec,
                        "no image processor config (preprocessor_config.json) found",
                        "save the checkpoint's processor beside it (processor.save_pretrained(folder))")
    square = {"height": image_size, "width": image_size}
    if model_type in ("clip", "clip_vision_model"):
        return tf.CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square)
    if model_type in ("siglip", "siglip_vision_model"):
        return tf.SiglipImageProcessor(size=square)
    if model_type == "dinov2":
        return tf.BitImageProcessor(size={"shortest_edge": image_size}, crop_size=square)
    return tf.ViTImageProcessor(size=square)


class ProcessorTransform:
    """PIL image -> (3, H, W) float32 tensor, as transformers' torchvision-backend image processors compute it
    (image_processing_backends.TorchvisionBackend): RGB (with do_convert_rgb, transparency composited onto white),
    the uint8 image
    resized with torchvision's antialiased v2 resize (transforms.v2.functional, whose uint8 kernels round
    differently from v1's by one grey level here and there) (the short side to `shortest_edge`, the long side
    int(size · long / short); or straight to height × width: a squash), a center crop (padded with zeros where
    the crop is larger), then the rescale and normalisation fused as (x − 255·mean) / (255·std)."""

    KNOWN = {"do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
             "do_normalize", "image_mean", "image_std", "do_convert_rgb"}

    def __init__(self, processor):
        from torchvision.transforms import InterpolationMode

        name = type(processor).__name__
        if name not in PROCESSORS:
            raise ConfigError(f"image processor {name} is not one the harness replicates exactly ("
                              f"{', '.join(PROCESSORS)}): its rules would be computed as another class's, silently")
        for flag in ("do_pad", "do_flip_channel_order", "do_reduce_labels"):
            if getattr(processor, flag, None):
                raise ConfigError(f"image processor {name} sets {flag}: the harness's transform does not have it")
        self.name = name
        self.do_resize = bool(processor.do_resize)
        self.size = dict(processor.size or {})
        modes = {0: InterpolationMode.NEAREST_EXACT, 1: InterpolationMode.LANCZOS, 2: InterpolationMode.BILINEAR,
                 3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX, 5: InterpolationMode.HAMMING}
        resample = processor.resample
        self.interpolation = resample if isinstance(resample, InterpolationMode) else modes[int(resample)]
        self.do_center_crop = bool(getattr(processor, "do_center_crop", False))
        self.crop_size = dict(getattr(processor, "crop_size", None) or {})
        self.do_rescale, self.rescale_factor = bool(processor.do_rescale), float(processor.rescale_factor)
        self.do_normalize = bool(processor.do_normalize)
        self.mean = [float(m) for m in np.atleast_1d(processor.image_mean)] if self.do_normalize else None
        self.std = [float(s) for s in np.atleast_1d(processor.image_std)] if self.do_normalize else None
        self.do_convert_rgb = bool(getattr(processor, "do_convert_rgb", False))
        if self.do_resize and not ({"shortest_edge"} <= self.size.keys() or {"height", "width"} <= self.size.keys()):
            raise ConfigError(f"image processor {name} size {self.size}: the harness reads shortest_edge or "
                              "height and width")
        if self.size.get("longest_edge") or self.size.get("max_height"):
            raise ConfigError(f"image processor {name} size {self.size}: a longest-edge bound is not supported")

    def __repr__(self) -> str:
        return (f"ProcessorTransform({self.name}: resize {self.size if self.do_resize else 'none'} "
                f"{self.interpolation.value}, crop {self.crop_size if self.do_center_crop else 'none'}, "
                f"mean {self.mean}, std {self.std})")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = s, int(s * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        return self.size["height"], self.size["width"]

    def output_size(self, image_size: int) -> tuple[int, int]:
        """(H, W) of a square image_size × image_size input after the transform."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        return self.resized_size(image_size, image_size) if self.do_resize else (image_size, image_size)

    raw_images = True  # it reads the image as decoded: transparency composited onto white, as the processor does

    def describe(self) -> dict:
        """What it computes (harness.data.transforms.describe): every rule it applies, as data."""
        return {"processor": self.name, "resize": self.size if self.do_resize else None,
                "interpolation": self.interpolation.value, "crop": self.crop_size if self.do_center_crop else None,
                "rescale": self.rescale_factor if self.do_rescale else None, "mean": self.mean, "std": self.std,
                "convert_rgb": self.do_convert_rgb}

    def split(self):
        """(geometry: PIL -> uint8 (3, H, W), finish: the rescale and normalisation on a batch)."""
        from harness.data.transforms import Finish

        if self.do_normalize:
            scale = 1.0 / self.rescale_factor if self.do_rescale else 1.0
            mean = tuple((torch.tensor(self.mean) * scale).tolist())
            std = tuple((torch.tensor(self.std) * scale).tolist())
            return self.geometry, Finish(None, mean, std)
        return self.geometry, Finish(None, None, None, self.rescale_factor if self.do_rescale else None)

    def geometry(self, image) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as tvF

        if self.do_convert_rgb and ("A" in image.getbands() or image.info.get("transparency") is not None):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba)
        # a processor without do_convert_rgb (ViT's) takes RGB images only (it fails on others): PIL's conversion,
        # what its users do before calling it
        image = image.convert("RGB")
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        if self.do_resize:
            x = tvF.resize(x, list(self.resized_size(*x.shape[-2:])), interpolation=self.interpolation, antialias=True)
        if self.do_center_crop:
            x = self._center_crop(x, self.crop_size["height"], self.crop_size["width"])
        return x

    def __call__(self, image) -> torch.Tensor:
        geometry, finish = self.split()
        return finish(geometry(image)[None])[0]

    @staticmethod
    def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as tvF

        h, w = x.shape[-2:]
        if cw > w or ch > h:
            pad = [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
                   (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0]
            x = tvF.pad(x, pad, fill=0)
            h, w = x.shape[-2:]
            if (h, w) == (ch, cw):
                return x
        return tvF.crop(x, int((h - ch) / 2.0), int((w - cw) / 2.0), ch, cw)


class Tokenizer:
    """list of str -> (B, T) token ids from the checkpoint's own tokenizer, padded to the model's maximum length
    and truncated there, as the model was trained (no attention mask: CLIP's causal text tower reads the
    end-of-text token, which padding after it cannot reach; SigLIP's bidirectional tower was trained on texts
    padded to 64 and reads the last position). A SigLIP checkpoint whose tokenizer is not SiglipTokenizer (SigLIP 2's
    Gemma tokenizer) gets its texts canonicalised first, as open_clip's SigLIP 2 configs do (module docstring)."""

    def __init__(self, spec: ModelSpec, cfg):
        self.max_length = int(cfg.text_config.max_position_embeddings)
        if is_class_name(spec.name):  # a random CLIPModel: open_clip's BPE tokenizer (same vocabulary)
            import open_clip

            self._open_clip = open_clip.get_tokenizer("ViT-B-32", context_length=self.max_length)
            self._tok = None
            return
        self._open_clip = None
        revision = source(spec)[1]
        self._tok = _offline(lambda name: _transformers().AutoTokenizer.from_pretrained(name, revision=revision), spec,
                             "its tokenizer could not be loaded",
                             "save it beside the model (tokenizer.save_pretrained(folder))")
        self.canonicalize = cfg.model_type == "siglip" and not type(self._tok).__name__.startswith("SiglipTokenizer")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._open_clip is not None:
            return self._open_clip(texts)
        texts = list(texts)
        if self.canonicalize:  # open_clip's "clean": "canonicalize": basic_clean, then lower case, no punctuation
            from open_clip.tokenizer import basic_clean, canonicalize_text

            texts = [canonicalize_text(basic_clean(t)) for t in texts]
        return self._tok(texts, padding="max_length", max_length=self.max_length, truncation=True,
                         return_tensors="pt")["input_ids"]

"""Hugging Face transformers models in the registry: "hf:ID_OR_FOLDER" (harness.models).

ID_OR_FOLDER is a hub id found in the Hugging Face cache (offline; online when HF_HUB_OFFLINE=0) or a folder that
`save_pretrained` wrote (config.json, the weights, preprocessor_config.json and, for a CLIP-like model, the
tokenizer's files). The model class follows the config's model_type:

  clip        CLIPModel        zero_shot and linear_probe: get_image_features / get_text_features
  siglip      SiglipModel      likewise (its ranking is the cosine's; logit_scale and logit_bias only score pairs)
  vit, deit   ViTModel, ...    linear_probe: the [CLS] token after the final LayerNorm (what the model's own
                               image-classification head reads; ViTModel's tanh pooler is a pretraining head and is
                               not loaded)
  dinov2      Dinov2Model      linear_probe: its pooler output (the [CLS] token after the final LayerNorm)
  clip_vision_model, siglip_vision_model: the image towers alone, their own pooler output

Anything else (Siglip2Model among them: its NaFlex processor cuts variable-resolution patch sequences, which the
harness's fixed-size image pipeline does not carry) is refused by name before any work.

Preprocessing is the checkpoint's own image-processor config (resize rule, size, crop, interpolation, rescale,
mean/std) computed as transformers' default (torchvision) backend computes it: ProcessorTransform, whose pixel
values equal the processor's (tests/test_hf.py). Text goes through the checkpoint's own tokenizer, padded to its
maximum length as the model was trained (SigLIP's tokenizer must pad to 64: with dynamic padding its embeddings
differ; SigLIP's tokenizer lower-cases and strips punctuation itself, as its processor does).

With weights "random" the name may be a model class instead ("hf:CLIPModel", "hf:ViTModel", ...), its config from
the declaration's kwargs: random weights of a known shape, as "open_clip:ViT-B-32" gives them (the agreement suite's
rows). Such a CLIPModel's tokenizer is open_clip's (the same BPE vocabulary, end-of-text the highest id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import Model, ModelSpec

# config.model_type -> (model class, kind). kind: "clip" (two towers), "image" (an image backbone)
MODEL_TYPES = {
    "clip": ("CLIPModel", "clip"),
    "siglip": ("SiglipModel", "clip"),
    "vit": ("ViTModel", "image"),
    "deit": ("DeiTModel", "image"),
    "dinov2": ("Dinov2Model", "image"),
    "clip_vision_model": ("CLIPVisionModel", "image"),
    "siglip_vision_model": ("SiglipVisionModel", "image"),
}
REFUSED = {
    "siglip2": "Siglip2Model's NaFlex processor gives variable-resolution patch sequences (pixel_attention_mask, "
               "spatial_shapes), which the harness's fixed-size image pipeline does not carry",
}
# image backbones whose features are the [CLS] token of last_hidden_state (their pooler is a pretraining head)
CLS_FEATURES = {"vit", "deit"}
CLASSES = {cls: model_type for model_type, (cls, _) in MODEL_TYPES.items()}
MODULES = ("transformers.", "harness.models.hf")  # transformers' models (and this module's wrappers) in memory


def split(name: str, weights: str | None) -> tuple[str, str]:
    """A checkpoint's own weights by default; a class name ("hf:CLIPModel") builds random ones."""
    return name, "random" if is_class_name(name) else (weights or "pretrained")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("hf: models need transformers: pip install 'vitclip-harness[hf]'") from None
    return transformers


def is_class_name(name: str) -> bool:
    return name in CLASSES


def config(spec: ModelSpec):
    """The checkpoint's config (offline: from the folder or the hub cache), or a class's config from kwargs."""
    tf = _transformers()
    if is_class_name(spec.name):
        return tf.AutoConfig.for_model(CLASSES[spec.name], **spec.kwargs)
    return _offline(tf.AutoConfig.from_pretrained, spec, "no config.json found",
                    "name a folder save_pretrained wrote, or a hub id in the Hugging Face cache (fill it once online)")


def _offline(load, spec: ModelSpec, problem: str, fix: str):
    """load(spec.name) (from the folder, or the hub cache offline), or ConfigError naming the problem and the fix."""
    try:
        return load(spec.name)
    except Exception as e:
        raise ConfigError(f"hf model {spec.name!r}: {problem} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          f"{fix}") from None


def kind_of(cfg) -> tuple[str, str]:
    """(model class, kind) for a config, or ConfigError naming the class that is not supported."""
    model_type = getattr(cfg, "model_type", None)
    if model_type in REFUSED:
        raise ConfigError(f"hf model type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in MODEL_TYPES:
        arch = ", ".join(getattr(cfg, "architectures", None) or []) or "no architectures listed"
        raise ConfigError(f"hf model type {model_type!r} ({arch}) is not supported: the hf: registry knows "
                          + ", ".join(f"{t} ({c})" for t, (c, _) in MODEL_TYPES.items()))
    return MODEL_TYPES[model_type]


def check(spec: ModelSpec) -> None:
    """Before any work: a class name with random weights, or a checkpoint whose config is found and whose model
    type is supported (with random weights, a checkpoint's config still gives the shape)."""
    if is_class_name(spec.name) and spec.weights != "random":
        raise ConfigError(f"hf:{spec.name} names a model class: it builds random weights from kwargs (weights "
                          "'random'); name a folder or hub id for trained weights")
    if spec.weights not in ("random", "pretrained"):
        raise ConfigError(f"weights {spec.weights!r} for hf model {spec.name!r}: 'pretrained' (the checkpoint's own) "
                          "or 'random'; a checkpoint is a folder save_pretrained wrote, named as the model")
    kind_of(config(spec))


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Model:
    tf = _transformers()
    cfg = config(spec)
    cls_name, kind = kind_of(cfg)
    cls = getattr(tf, cls_name)
    extra = {"add_pooling_layer": False} if cfg.model_type in CLS_FEATURES else {}
    torch.manual_seed(seed)
    if spec.weights == "random":
        module = cls._from_config(cfg, **extra)
    else:
        if Path(spec.name).is_dir():
            inputs.fingerprint(spec.name)  # what a finished unit read (harness.infra.inputs)
        module = cls.from_pretrained(spec.name, **extra)
    return _model(module.to(device).eval(), spec, cfg)


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    """A transformers model in memory (or this module's TwoTowers / Backbone around one): its processor and
    tokenizer from the checkpoint it was loaded from (config.name_or_path: a folder, or a hub id in the cache), or
    for a model built from a config alone the processor transformers pairs with its type."""
    if isinstance(module, (TwoTowers, Backbone)):
        module = module.hf
    cfg = module.config
    source = getattr(cfg, "name_or_path", "") or ""  # built from a config alone: its type's class name
    cls_name, _ = kind_of(cfg)
    return _model(module, ModelSpec("hf", source or cls_name, spec.id, "in memory"), cfg, tokenizer)


def _model(module: torch.nn.Module, spec: ModelSpec, cfg, tokenizer=None) -> Model:
    _, kind = kind_of(cfg)
    image_size = _image_size(cfg)
    transform = ProcessorTransform(image_processor(spec, cfg.model_type, image_size))
    input_size = (3, *transform.output_size(image_size))
    if kind == "clip":
        if tokenizer is None:
            tokenizer = Tokenizer(spec, cfg) if not is_class_name(spec.name) or cfg.model_type == "clip" else None
        towers = TwoTowers(module)
        return Model(spec, "hf", towers, towers.encode_image, transform, image_tower=module.vision_model,
                     input_size=input_size, encode_text=towers.encode_text if tokenizer else None,
                     tokenizer=tokenizer)
    backbone = Backbone(module, cfg.model_type in CLS_FEATURES)
    return Model(spec, "hf", backbone, backbone, transform, input_size=input_size)


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
    """A transformers image backbone as a features function: forward(images) -> (B, D), the [CLS] token after the
    final LayerNorm (cls=True: ViT, DeiT) or the model's own pooler output (Dinov2, the CLIP/SigLIP vision towers).
    `hf` is the transformers model itself."""

    def __init__(self, hf: torch.nn.Module, cls: bool):
        super().__init__()
        self.hf, self.cls = hf, cls

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=images)
        return out.last_hidden_state[:, 0] if self.cls else out.pooler_output  # (B, D)


def transformers_model(model: Model) -> torch.nn.Module:
    """The transformers module of a resolved hf: model (inside its TwoTowers or Backbone)."""
    return model.module.hf


CONVERTIBLE = {"clip", "vit"}  # model types harness.convert.hf turns into the reference (CLIPModel, ViTModel)


def has_reference(spec: ModelSpec) -> bool:
    return config(spec).model_type in CONVERTIBLE


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
        return _offline(tf.AutoImageProcessor.from_pretrained, spec,
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
    padded to 64 and reads the last position)."""

    def __init__(self, spec: ModelSpec, cfg):
        self.max_length = int(cfg.text_config.max_position_embeddings)
        if is_class_name(spec.name):  # a random CLIPModel: open_clip's BPE tokenizer (same vocabulary)
            import open_clip

            self._open_clip = open_clip.get_tokenizer("ViT-B-32", context_length=self.max_length)
            self._tok = None
            return
        self._open_clip = None
        self._tok = _offline(_transformers().AutoTokenizer.from_pretrained, spec, "its tokenizer could not be loaded",
                             "save it beside the model (tokenizer.save_pretrained(folder))")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._open_clip is not None:
            return self._open_clip(texts)
        return self._tok(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                         return_tensors="pt")["input_ids"]

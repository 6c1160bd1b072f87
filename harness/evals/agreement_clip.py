"""CLIP rows of the agreement suite: reference CLIP vs open_clip (and timm's CLIP image towers).

Same tolerances and the same per-block report as the ViT rows (see agreement.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..convert.open_clip import convert_state_dict, from_open_clip
from ..convert.timm import from_timm
from ..data.photos import image_batch
from ..methods.numerics import LOW_PRECISION, TOL, capture, cast, compare_gradients, dtype_of, sweep, verdict
from ..reference.clip import clip_loss

OUTPUTS = ["image_embedding", "text_embedding", "logits", "loss_terms"]


def open_clip_loss_terms(image_features: torch.Tensor, text_features: torch.Tensor,
                         logit_scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss as its 2N per-example terms (the N image->text cross-entropies, then the N text->image
    ones): ClipLoss's own get_logits and get_ground_truth, the cross-entropy unreduced. Their mean is
    ClipLoss()(image_features, text_features, logit_scale) (tests/test_clip.py)."""
    from open_clip.loss import ClipLoss

    loss = ClipLoss()
    per_image, per_text = loss.get_logits(image_features, text_features, logit_scale)
    labels = loss.get_ground_truth(image_features.device, per_image.shape[0])
    return torch.cat([F.cross_entropy(per_image, labels, reduction="none"),
                      F.cross_entropy(per_text, labels, reduction="none")])


def _inputs(transform, image_size: int, config: dict, seed: int, device,
            pairs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As many images as captions: real photographs (through the model's own preprocessing `transform`) plus random
    tensors; the first `pairs` of them when given."""
    import open_clip

    images = image_batch(transform, image_size, config["photos"], config["random_inputs"], seed)[:pairs]
    captions = config["captions"][: len(images)]
    if len(captions) != len(images):
        raise ValueError(f"the suite config needs {len(images)} captions (one per image), has {len(captions)}")
    tokens = open_clip.get_tokenizer(config["tokenizer"])(captions)
    return images.to(device), tokens.to(device)


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "text"):  # reference CLIP
        vis, txt = model.visual.blocks, model.text.blocks
    else:  # open_clip CLIP
        vis, txt = model.visual.transformer.resblocks, model.transformer.resblocks
    return [(f"visual.blocks.{i}", b) for i, b in enumerate(vis)] + [(f"text.blocks.{i}", b) for i, b in enumerate(txt)]


def _outputs(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Embeddings, logits and the contrastive loss's 2N per-example terms (judged as terms: a scalar loss would be
    one element, too few to judge against a float64 truth), each computed the way its own library computes it.

    The towers run once: the logits come from each library's own logits function (the reference's forward(),
    open_clip's get_logits()) with its encode_image/encode_text calls answered from the embeddings just computed,
    normalised as both libraries normalise them. A second pass would give the same bits and double the cost
    (bfloat16 and float16 matmuls run ~50x slower than float32 on a CPU without native support)."""
    image, text = model.encode_image(images), model.encode_text(tokens)
    img_n, txt_n = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    with _encoded(model, {id(images): (image, img_n)}, {id(tokens): (text, txt_n)}):
        if hasattr(model, "text"):  # reference: forward() and harness.clip_loss
            logits = model(images, tokens)[0]
            terms = clip_loss(img_n, txt_n, model.scale(), reduction="none")
        else:  # open_clip: get_logits() and ClipLoss
            logits = model.get_logits(images, tokens)[0]
            terms = open_clip_loss_terms(img_n, txt_n, model.logit_scale.exp())
    return {"image_embedding": image, "text_embedding": text, "logits": logits, "loss_terms": terms}


@contextlib.contextmanager
def _encoded(model: nn.Module, images: dict, texts: dict):
    """model.encode_image/encode_text answered from {id(input): (raw, normalised)} for these very inputs (any other
    input is an error, not a silent recomputation); the model's own methods are back on exit."""
    def answer(known: dict, what: str):
        def encode(x, normalize: bool = False):
            if id(x) not in known:
                raise RuntimeError(f"{what} called on an input other than the one just encoded")
            return known[id(x)][1 if normalize else 0]
        return encode

    model.encode_image, model.encode_text = answer(images, "encode_image"), answer(texts, "encode_text")
    try:
        yield
    finally:
        del model.encode_image, model.encode_text  # the instance attributes go; the class's methods show again


def model_rows(spec: models.ModelSpec, config: dict, ctx, dtypes: list[str]) -> list[dict]:
    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    model = resolved.module
    images, tokens = _inputs(resolved.transform, resolved.input_size[1], config, ctx.seed, ctx.device)

    def run(m, dt):
        return capture(_stages(m), lambda: _outputs(m, images.to(dt), tokens))

    rows = sweep(model, from_open_clip, run, OUTPUTS, dtypes, ctx.device, "open_clip")
    return [{**r, "n_inputs": len(images)} for r in rows]


def gradient_rows(spec: models.ModelSpec, config: dict, ctx, dtypes: list[str]) -> list[dict]:
    """Gradients of the contrastive loss for every parameter: reference vs open_clip, on the first
    `gradient_pairs` image–text pairs (each row judges whole stages' parameters: many elements from few inputs)."""
    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    model = resolved.module
    images, tokens = _inputs(resolved.transform, resolved.input_size[1], config, ctx.seed, ctx.device,
                             config.get("gradient_pairs"))
    rows = compare_gradients(model, from_open_clip, convert_state_dict,
                             lambda m, dt: _outputs(m, images.to(dt), tokens)["loss_terms"].mean(), dtypes,
                             "open_clip")
    return [{**r, "n_inputs": len(images)} for r in rows]


def three_way_rows(spec: models.ModelSpec, timm_spec: models.ModelSpec, config: dict, ctx,
                   dtypes: list[str]) -> list[dict]:
    """open_clip's image tower, timm's CLIP ViT (weights moved by timm's own checkpoint filter) and the reference."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    oc = resolved.module.double()
    timm_name = timm_spec.name
    tm = models.resolve({"model": timm_spec.string, "kwargs": {"num_classes": oc.visual.proj.shape[1]}},
                        seed=ctx.seed, device=ctx.device).module.double()
    tm.load_state_dict(checkpoint_filter_fn(oc.state_dict(), tm), strict=True)
    images, _ = _inputs(resolved.transform, resolved.input_size[1], config, ctx.seed, ctx.device,
                        config.get("three_way_images"))
    rows = []
    for dtype in [d for d in dtypes if d in TOL]:
        dt = dtype_of(dtype)
        oc_d, tm_d = cast(oc, dtype), cast(tm, dtype)
        x = images.to(dt)
        with torch.no_grad():
            emb = {"open_clip": oc_d.encode_image(x), "timm": tm_d(x),
                   "reference (from timm)": from_timm(tm_d)(x),
                   "reference (from open_clip)": from_open_clip(oc_d).encode_image(x)}
        for a, b in [("timm", "open_clip"), ("reference (from timm)", "open_clip"),
                     ("reference (from open_clip)", "timm")]:
            rows.append({"check": "image_embedding_3way", "dtype": dtype, "backend": "explicit",
                         "library": f"{a} vs {b}", "timm_model": timm_name, "n_inputs": len(x),
                         **verdict(dtype, emb[a], emb[b]), "first_failing_stage": "none"})
    return rows


def loss_rows(cfg: dict, dtypes: list[str], device, seed: int) -> list[dict]:
    """harness.clip_loss vs open_clip's ClipLoss on random unit features, batch sizes × logit scales. Each row
    judges the 2N per-example terms of ⌈min_terms / 2N⌉ independent batches together (at least min_terms
    elements: a batch of 2 gives 4 terms, so 16 batches), and states the losses (the terms' means) too."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in cfg["batch_sizes"]:
        if n < 2:
            raise ValueError(f"clip loss batch size {n}: the loss of one pair is 0 on both sides (nothing to judge)")
        batches = -(-cfg.get("min_terms", 64) // (2 * n))
        feats = [[F.normalize(torch.randn(n, cfg["dim"], generator=g, dtype=torch.float64), dim=-1)
                  for _ in range(2)] for _ in range(batches)]
        for scale in cfg["logit_scales"]:
            scale64 = torch.tensor(scale, dtype=torch.float64)
            truth = torch.cat([open_clip_loss_terms(img, txt, scale64) for img, txt in feats])
            for dtype in dtypes:
                dt = dtype_of(dtype)
                s = torch.tensor(scale, dtype=dt, device=device)
                pairs = [(img.to(device, dt), txt.to(device, dt)) for img, txt in feats]
                ref = torch.cat([clip_loss(img, txt, s, reduction="none") for img, txt in pairs])
                lib = torch.cat([open_clip_loss_terms(img, txt, s) for img, txt in pairs])
                low = dtype in LOW_PRECISION
                r = verdict(dtype, ref, lib, truth.to(device) if low else None,
                            tol=None if low else cfg.get("tol", {}).get(dtype))
                rows.append({"check": "clip_loss", "library": "open_clip ClipLoss", "batch": n, "batches": batches,
                             "logit_scale": scale, "dtype": dtype, "loss_ref": ref.double().mean().item(),
                             "loss_lib": lib.double().mean().item(), **r})
    return rows

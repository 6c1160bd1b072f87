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
from ..reference.clip import clip_loss, siglip_loss

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


def open_clip_siglip_terms(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                           logit_bias: torch.Tensor) -> torch.Tensor:
    """open_clip's SigLipLoss as its N² per-pair terms, row-major: SigLipLoss's own get_logits and
    get_ground_truth, the log-sigmoid unreduced. Their sum over N is SigLipLoss()(...) (tests/test_hf.py)."""
    from open_clip.loss import SigLipLoss

    loss = SigLipLoss()
    logits = loss.get_logits(image_features, text_features, logit_scale, logit_bias)
    labels = loss.get_ground_truth(image_features.device, image_features.dtype, image_features.shape[0])
    return -F.logsigmoid(labels * logits).flatten()


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
    """harness.clip_loss vs open_clip's ClipLoss, and harness.siglip_loss vs open_clip's SigLipLoss, on random unit
    features, batch sizes × logit scales (× logit biases for SigLIP). Each row judges the per-example terms (2N for
    CLIP, N² for SigLIP) of enough independent batches together to have at least min_terms elements (a CLIP batch
    of 2 gives 4 terms, so 16 batches), and states the losses too (CLIP: the terms' mean; SigLIP: their sum / N)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in cfg["batch_sizes"]:
        if n < 2:
            raise ValueError(f"clip loss batch size {n}: the loss of one pair is 0 on both sides (nothing to judge)")
        for loss_name in ["clip_loss"] + (["siglip_loss"] if cfg.get("logit_biases") else []):
            per_batch = 2 * n if loss_name == "clip_loss" else n * n
            batches = -(-cfg.get("min_terms", 64) // per_batch)
            feats = [[F.normalize(torch.randn(n, cfg["dim"], generator=g, dtype=torch.float64), dim=-1)
                      for _ in range(2)] for _ in range(batches)]
            biases = [None] if loss_name == "clip_loss" else cfg["logit_biases"]
            for scale in cfg["logit_scales"]:
                for bias in biases:
                    rows += _loss_rows(loss_name, feats, n, scale, bias, cfg, dtypes, device)
    return rows


def _loss_rows(loss_name: str, feats: list, n: int, scale: float, bias: float | None, cfg: dict,
               dtypes: list[str], device) -> list[dict]:
    def terms(img, txt, s, b, ours: bool):
        if loss_name == "clip_loss":
            return clip_loss(img, txt, s, reduction="none") if ours else open_clip_loss_terms(img, txt, s)
        return siglip_loss(img, txt, s, b, reduction="none") if ours else open_clip_siglip_terms(img, txt, s, b)

    def loss(t: torch.Tensor) -> float:  # the loss of the judged batches, averaged over batches
        return t.double().mean().item() if loss_name == "clip_loss" else t.double().sum().item() / (n * len(feats))

    f64 = torch.float64
    s64, b64 = torch.tensor(scale, dtype=f64), torch.tensor(bias if bias is not None else 0.0, dtype=f64)
    truth = torch.cat([terms(img, txt, s64, b64, False) for img, txt in feats])
    rows = []
    for dtype in dtypes:
        dt = dtype_of(dtype)
        s = torch.tensor(scale, dtype=dt, device=device)
        b = torch.tensor(bias if bias is not None else 0.0, dtype=dt, device=device)
        pairs = [(img.to(device, dt), txt.to(device, dt)) for img, txt in feats]
        ref = torch.cat([terms(img, txt, s, b, True) for img, txt in pairs])
        lib = torch.cat([terms(img, txt, s, b, False) for img, txt in pairs])
        low = dtype in LOW_PRECISION
        r = verdict(dtype, ref, lib, truth.to(device) if low else None,
                    tol=None if low else cfg.get("tol", {}).get(dtype))
        library = "open_clip ClipLoss" if loss_name == "clip_loss" else "open_clip SigLipLoss"
        rows.append({"check": loss_name, "library": library, "batch": n, "batches": len(feats),
                     "logit_scale": scale, **({"logit_bias": bias} if bias is not None else {}), "dtype": dtype,
                     "loss_ref": loss(ref), "loss_lib": loss(lib), **r})
    return rows

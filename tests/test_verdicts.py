"""Every verdict can fail: errors planted into the reference fail the rows that should catch them.

Each family of agreement row (model outputs, blocks, attention, the loss, CLIP logits and embeddings, gradients) in
every dtype: a first run without a planted error passes and states each row's `power` (harness.methods.numerics: the
relative error of the reference's output the row fails whatever its direction); a second run scales the reference's
output of that row by 1 + 2 × power — an error of twice the stated power, planted in the reference's own computation
(a forward hook, a wrapped function, a gradient hook) — and the row fails. Upstream rows, where the error is not,
still pass. Then bugs of the kind the rows exist for: a dropped term of the loss, a softmax temperature off, a
backward pass off by 1% in one block (tests/test_compare.py pins those to their block in harness.compare).
"""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import timm
import torch

import harness
import harness.methods.numerics as numerics
from harness.convert.timm import from_timm
from harness.evals import agreement, agreement_clip
from harness.methods.numerics import DTYPES
from harness.models.open_clip import transform as open_clip_transform
from tests.test_clip import small_open_clip

CPU = torch.device("cpu")
BACKEND = {"now": "explicit"}  # the attention backend sweep() is running, for keying the planted errors


@pytest.fixture
def tracked_backend(monkeypatch):
    """sweep() pins each backend with numerics.backend_context: record which one is running."""
    original = numerics.backend_context

    @contextlib.contextmanager
    def tracking(backend):
        BACKEND["now"] = backend
        with original(backend):
            yield

    monkeypatch.setattr(numerics, "backend_context", tracking)
    yield BACKEND
    BACKEND["now"] = "explicit"


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def scaled(t: torch.Tensor, eps: float) -> torch.Tensor:
    """t × (1 + eps), computed in float64 and rounded once to t's dtype."""
    return (t.double() * (1 + eps)).to(t.dtype)


def twice_power(rows: pd.DataFrame, *keys: str) -> dict:
    """{row key: 2 × power} for the rows of a first, unplanted run."""
    return {tuple(r[k] for k in keys): 2 * r["power"] for _, r in rows.iterrows()}


# ------------------------------------------------------------------------------------ ViT outputs and blocks
def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=10).eval()


VIT_INPUTS = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # 70 logits
VIT_STAGES = ["patch_embed", "blocks.0", "blocks.1", "logits"]


def vit_rows(plant_at: str | None = None, eps: dict | None = None) -> pd.DataFrame:
    """agreement.model_rows on a tiny ViT, every dtype and CPU backend; with `plant_at`, the reference's output of
    that stage ("logits": its head) scaled by 1 + eps[(stage, dtype, backend)]."""
    def to_reference(model, copy=True):
        ref = from_timm(model, copy=copy)
        if plant_at is not None:
            module = ref.head if plant_at == "logits" else ref.get_submodule(plant_at)
            module.register_forward_hook(
                lambda _m, _i, out: scaled(out, eps[(plant_at, name_of(out.dtype), BACKEND["now"])]))
        return ref

    original = agreement.from_timm
    agreement.from_timm = to_reference
    try:
        rows = agreement.model_rows(tiny_vit(), VIT_INPUTS, list(DTYPES), CPU)
    finally:
        agreement.from_timm = original
    df = pd.DataFrame(rows)
    df["stage"] = df["stage"].where(df["check"] == "block", df["check"])
    return df


def test_vit_outputs_and_blocks_fail_at_twice_their_power(tracked_backend):
    clean = vit_rows()
    assert clean["passed"].all()
    assert set(clean["stage"]) == set(VIT_STAGES) and set(clean["dtype"]) == set(DTYPES)
    eps = twice_power(clean, "stage", "dtype", "backend")
    for stage in VIT_STAGES:
        planted = vit_rows(stage, eps)
        here = planted[planted["stage"] == stage]
        assert not here["passed"].any(), here[["dtype", "backend", "rel_err", "power", "passed"]]
        upstream = planted[planted["stage"].isin(VIT_STAGES[: VIT_STAGES.index(stage)])]
        assert upstream["passed"].all()
        logits = planted[planted["stage"] == "logits"]
        assert (logits["first_failing_stage"] == (stage if stage != "logits" else "none")).all()


# -------------------------------------------------------------------------------- CLIP outputs, logits, loss
CLIP_CONFIG = {"photos": ["astronaut"], "random_inputs": 31, "tokenizer": "ViT-B-32",
               "captions": ["a photo of an astronaut."] + [f"random noise number {i}." for i in range(31)]}


def clip_rows(eps: dict | None = None, loss=None) -> pd.DataFrame:
    """The agreement suite's CLIP outputs (sweep over every dtype and CPU backend) on a one-block ViT-S-32 with 32
    image–text pairs; with `eps`, the reference's image and text embeddings, logits and loss terms each scaled by
    1 + eps[(output, dtype, backend)] (independently: the logits and loss see normalised embeddings); with
    `loss`, harness.clip_loss replaced by it."""
    model = small_open_clip("ViT-S-32", layers=1)
    images, tokens = agreement_clip._inputs(open_clip_transform(model), model.visual.image_size[0], CLIP_CONFIG, 0,
                                             CPU)

    def plant(output: str):
        def hook(_m, _i, out):
            first = out[0] if isinstance(out, tuple) else out
            first = scaled(first, eps[(output, name_of(first.dtype), BACKEND["now"])])
            return (first, *out[1:]) if isinstance(out, tuple) else first
        return hook

    def to_reference(m, copy=True):
        ref = harness.from_open_clip(m, copy=copy)
        if eps is not None:
            ref.visual.register_forward_hook(plant("image_embedding"))
            ref.text.register_forward_hook(plant("text_embedding"))
            ref.register_forward_hook(plant("logits"))
        return ref

    def planted_loss(img, txt, scale, reduction="mean"):
        out = agreement_clip_loss(img, txt, scale, reduction)
        return scaled(out, eps[("loss_terms", name_of(img.dtype), BACKEND["now"])]) if eps is not None else out

    def run(m, dt):
        return numerics.capture(agreement_clip._stages(m), lambda: agreement_clip._outputs(m, images.to(dt), tokens))

    agreement_clip_loss = harness.clip_loss
    original = agreement_clip.clip_loss
    agreement_clip.clip_loss = loss or planted_loss
    try:
        rows = numerics.sweep(model, to_reference, run, agreement_clip.OUTPUTS, list(DTYPES), CPU, "open_clip")
    finally:
        agreement_clip.clip_loss = original
    df = pd.DataFrame(rows)
    return df[df["check"] != "block"]


def test_clip_embeddings_logits_and_loss_terms_fail_at_twice_their_power(tracked_backend):
    clean = clip_rows()
    assert clean["passed"].all()
    assert set(clean["check"]) == set(agreement_clip.OUTPUTS)
    low = clean[clean["dtype"].isin(["bfloat16", "float16"])]
    assert (low["n_elements"] >= numerics.MIN_ELEMENTS).all() and (low["widening"] <= 1.5).all()
    planted = clip_rows(twice_power(clean, "check", "dtype", "backend"))
    assert not planted["passed"].any(), planted[planted["passed"]][["check", "dtype", "backend", "rel_err", "power"]]


def test_a_dropped_loss_term_fails_every_loss_row(tracked_backend):
    """The symmetric loss with its text->image half replaced by the image->text half (a classic bug)."""
    def one_sided(img, txt, scale, reduction="mean"):
        terms = harness.clip_loss(img, txt, scale, reduction="none")
        half = terms[: len(img)]
        return torch.cat([half, half]) if reduction == "none" else half.mean()

    df = clip_rows(loss=one_sided)
    loss = df[df["check"] == "loss_terms"]
    assert len(loss) and not loss["passed"].any()
    assert df[df["check"] != "loss_terms"]["passed"].all()


# ------------------------------------------------------------------------------------------------ the loss
LOSS_CONFIG = {"batch_sizes": [2, 64], "logit_scales": [1.0, 100.0], "dim": 64, "min_terms": 64}


def loss_rows(monkeypatch, wrap=None) -> pd.DataFrame:
    if wrap is not None:
        monkeypatch.setattr(agreement_clip, "clip_loss", wrap)
    rows = agreement_clip.loss_rows(LOSS_CONFIG, list(DTYPES), CPU, 0)
    monkeypatch.setattr(agreement_clip, "clip_loss", harness.clip_loss)
    return pd.DataFrame(rows)


def test_loss_rows_fail_at_twice_their_power(monkeypatch):
    clean = loss_rows(monkeypatch)
    assert clean["passed"].all() and (clean["n_elements"].dropna() >= 64).all()
    assert set(clean["batches"]) == {16, 1}  # 16 batches of 2 pairs: 64 terms
    eps = twice_power(clean, "batch", "logit_scale", "dtype")

    def planted(img, txt, scale, reduction="mean"):
        out = harness.clip_loss(img, txt, scale, reduction)
        return scaled(out, eps[(len(img), float(scale), name_of(img.dtype))])

    df = loss_rows(monkeypatch, planted)
    assert not df["passed"].any(), df[df["passed"]][["batch", "logit_scale", "dtype", "rel_err", "power"]]


# ------------------------------------------------------------------------------------------------ attention
ATTENTION = {"batch": 2, "head_dim": 16, "seq_lens": [50], "heads": [2], "masks": ["none", "causal", "padding"]}
MHA = "reference MultiHeadAttention vs"


def mask_of(attn_mask, is_causal) -> str:
    return "causal" if is_causal else "padding" if attn_mask is not None else "none"


def attention_frame(monkeypatch, eps=None, temperature=None) -> pd.DataFrame:
    """agreement.attention_rows on small shapes; with `eps`, each reference output (its SDPA, its online softmax,
    its MultiHeadAttention) scaled by 1 + eps[(comparison, mask, dtype)] (the three MultiHeadAttention rows share
    one output: the largest of their three); with `temperature`, the reference's softmax scale multiplied by
    1 + temperature."""
    ref_sdpa, ref_online, make_modules = (agreement.scaled_dot_product_attention, agreement.online_softmax_attention,
                                          agreement._attention_modules)

    def key(comparison, mask, dtype):
        if comparison.startswith(MHA):
            return max(eps[(c, mask, name_of(dtype))] for c in MHA_ROWS)
        return eps[(comparison, mask, name_of(dtype))]

    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
        if temperature is not None:
            scale = (1 + temperature) / q.shape[-1] ** 0.5
        out = ref_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
        return out if eps is None else scaled(out, key("reference sdpa vs F.scaled_dot_product_attention",
                                                       mask_of(attn_mask, is_causal), q.dtype))

    def online(q, k, v, is_causal=False, block_size=256):
        scale = None if temperature is None else (1 + temperature) / q.shape[-1] ** 0.5
        out = ref_online(q, k, v, is_causal=is_causal, scale=scale, block_size=block_size)
        return out if eps is None else scaled(out, key("reference online softmax vs F.scaled_dot_product_attention",
                                                       mask_of(None, is_causal), q.dtype))

    def modules(dim, heads, device, seed):
        made = make_modules(dim, heads, device, seed)
        if eps is not None:
            made["ref"].register_forward_hook(
                lambda _m, args, kwargs, out: scaled(out, key(MHA, mask_of(kwargs.get("attn_mask"),
                                                                           kwargs.get("is_causal")), out.dtype)),
                with_kwargs=True)
        return made

    monkeypatch.setattr(agreement, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(agreement, "online_softmax_attention", online)
    monkeypatch.setattr(agreement, "_attention_modules", modules)
    if temperature is not None:  # the MultiHeadAttention's explicit path calls the module-level function
        monkeypatch.setattr(harness.reference.attention, "scaled_dot_product_attention", sdpa)
    try:
        return pd.DataFrame(agreement.attention_rows(ATTENTION, list(DTYPES), CPU, 0))
    finally:
        monkeypatch.undo()


MHA_ROWS = [f"{MHA} nn.MultiheadAttention", f"{MHA} timm Attention (fused)", f"{MHA} timm Attention (manual)"]


def test_attention_rows_fail_at_twice_their_power(monkeypatch):
    clean = attention_frame(monkeypatch)
    assert clean["passed"].all() and set(clean["comparison"]) >= set(MHA_ROWS)
    planted = attention_frame(monkeypatch, twice_power(clean, "comparison", "mask", "dtype"))
    assert not planted["passed"].any(), planted[planted["passed"]][["comparison", "mask", "dtype", "power"]]


@pytest.mark.parametrize("dtype, temperature", [("float64", 1e-11), ("float32", 1e-4), ("bfloat16", 0.1),
                                                ("float16", 0.01)])
def test_a_softmax_temperature_off_fails_the_attention_rows(monkeypatch, dtype, temperature):
    """The softmax's 1/√d off by a relative `temperature` fails every reference row of the dtype. Measured on these
    inputs (14 rows a dtype): float64 1e-11 fails all 14, 1e-12 three; float32 1e-4 all, 1e-5 three; float16 0.01
    all, 0.003 five; bfloat16 0.05 all, 0.03 five — the values here are 3-10x the largest that leaves rows
    passing, so round-off on another machine cannot flip them."""
    df = attention_frame(monkeypatch, temperature=temperature)
    df = df[df["dtype"] == dtype]
    assert len(df) and not df["passed"].any(), df[df["passed"]][["comparison", "mask", "rel_err", "power"]]


# ------------------------------------------------------------------------------------------------ gradients
def gradient_frame(monkeypatch, eps=None, whole=None) -> pd.DataFrame:
    """agreement.gradient_rows on the tiny ViT (float64, float32); with `eps`, every parameter gradient of each
    stage scaled by 1 + eps[(stage, dtype)] (a gradient hook: the error stays in its stage); with `whole`, every
    gradient scaled by 1 + whole[dtype]."""
    def to_reference(model, copy=True):
        ref = from_timm(model, copy=copy)
        names = [n for n, _ in ref.named_parameters()]
        stage_of = {n: s for s, members in numerics.gradient_stages(
            names, {n: p.numel() for n, p in ref.named_parameters()}).items() for n in members}
        for n, p in ref.named_parameters():
            if eps is not None:
                p.register_hook(lambda g, s=stage_of[n]: scaled(g, eps[(s, name_of(g.dtype))]))
            if whole is not None:
                p.register_hook(lambda g: scaled(g, whole[name_of(g.dtype)]))
        return ref

    monkeypatch.setattr(agreement, "from_timm", to_reference)
    rows = agreement.gradient_rows(tiny_vit(), VIT_INPUTS, ["float64", "float32"])
    monkeypatch.undo()
    df = pd.DataFrame(rows)
    return df


def test_gradient_rows_fail_at_twice_their_power(monkeypatch):
    clean = gradient_frame(monkeypatch)
    assert clean["passed"].all()
    stages = clean[clean["check"] == "gradient_stage"]
    assert list(dict.fromkeys(stages["stage"])) == ["(before the blocks)", "blocks.0", "blocks.1",
                                                    "(after the blocks)"]
    planted = gradient_frame(monkeypatch, eps=twice_power(stages, "stage", "dtype"))
    per_stage = planted[planted["check"] == "gradient_stage"]
    assert not per_stage["passed"].any(), per_stage[per_stage["passed"]][["stage", "dtype", "rel_err", "power"]]
    model = clean[clean["check"] == "gradients"]
    planted = gradient_frame(monkeypatch, whole=dict(zip(model["dtype"], 2 * model["power"])))
    assert not planted[planted["check"] == "gradients"]["passed"].any()


def test_a_backward_pass_off_by_one_percent_in_one_block_fails_that_block_first(monkeypatch):
    """A custom autograd function in blocks.1's MLP whose backward is 1% off: blocks.1 and everything before it
    (in forward order) fail, the stage after it passes, and the first failing stage in backward order is
    blocks.1."""
    from tests.test_compare import OffBackward

    def to_reference(model, copy=True):
        ref = from_timm(model, copy=copy)
        ref.blocks[1].mlp.fc1.register_forward_hook(lambda _m, _i, out: OffBackward.apply(out))
        return ref

    monkeypatch.setattr(agreement, "from_timm", to_reference)
    df = pd.DataFrame(agreement.gradient_rows(tiny_vit(), VIT_INPUTS, ["float64", "float32"]))
    monkeypatch.undo()
    for dtype in ("float64", "float32"):
        rows = df[df["dtype"] == dtype]
        stages = rows[rows["check"] == "gradient_stage"].set_index("stage")["passed"]
        assert not stages["blocks.1"] and not stages["blocks.0"] and not stages["(before the blocks)"]
        assert stages["(after the blocks)"]
        model = rows[rows["check"] == "gradients"].iloc[0]
        assert not model["passed"] and model["first_failing_stage"] == "blocks.1"

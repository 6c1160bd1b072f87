"""The tolerance rules (harness.methods.numerics) and low-precision agreement on CPU, so that CI guards what a GPU
runs."""

import math

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import harness
from harness.evals import agreement, agreement_clip
from harness.infra.suite import Context
from harness.methods.numerics import errors, false_fail_rate, unit_roundoff, verdict, widening
from harness.models.open_clip import transform as open_clip_transform
from tests.test_clip import small_open_clip

LOW = ["bfloat16", "float16"]


def test_rule_floors_the_library_error_at_the_unit_roundoff():
    truth = torch.ones(64, dtype=torch.float64)
    u = unit_roundoff("bfloat16")
    lucky_library = truth * (1 + 0.01 * u)  # a library result that happens to land almost on the truth
    reference = truth * (1 + 2.5 * u)  # 2.5 roundings off: within 2 w(64) u = 2.94 u, 80x past 2 w(64) x 0.01 u
    row = verdict("bfloat16", reference, lucky_library, truth)
    assert row["passed"] and row["tolerance"] == pytest.approx(2 * widening(64) * u)
    assert not verdict("bfloat16", truth * (1 + 3 * u), lucky_library, truth)["passed"]  # 3 u: past the bound


def test_a_verdict_against_the_truth_needs_64_elements():
    """w(n) <= 1.5 from 64 elements on; fewer would let a reference several times less accurate pass (w(9) = 3.2,
    w(1) = 637): verdict() refuses them, naming the fix."""
    assert widening(64) <= 1.5 < widening(60)
    truth = torch.ones(63, dtype=torch.float64)
    with pytest.raises(ValueError, match="on 63 element.*at least 64.*per-example"):
        verdict("bfloat16", truth, truth, truth)
    assert verdict("float32", truth[:1], truth[:1])["passed"]  # a fixed tolerance needs no count


def test_power_is_the_tolerance_plus_the_error_measured():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(1000, dtype=torch.float64, generator=g)
    lib = truth + 1e-3 * torch.randn(1000, dtype=torch.float64, generator=g)
    ref = truth + 1e-3 * torch.randn(1000, dtype=torch.float64, generator=g)
    row = verdict("float16", ref, lib, truth)
    assert row["power"] == pytest.approx(row["tolerance"] + row["ref_err_vs_fp64"])
    fixed = verdict("float32", lib, truth)
    assert fixed["power"] == pytest.approx(1e-5 + fixed["rel_err"])


def test_rule_widens_for_small_tensors_and_not_for_large_ones():
    assert widening(1) > 600 and 3.0 < widening(9) < 3.3 and 1.4 < widening(64) < 1.5 and widening(100_000) < 1.02
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(100_000, dtype=torch.float64, generator=g)
    lib = truth + 1e-3 * torch.randn(100_000, dtype=torch.float64, generator=g)
    ref = truth + 2.5e-3 * torch.randn(100_000, dtype=torch.float64, generator=g)  # 2.5x less accurate: fails
    assert not verdict("float16", ref, lib, truth)["passed"]
    ref = truth + 1.0e-3 * torch.randn(100_000, dtype=torch.float64, generator=g)  # as accurate: passes
    assert verdict("float16", ref, lib, truth)["passed"]


def test_equally_accurate_small_tensors_pass_at_the_stated_rate():
    """Two implementations with errors of the same spread on 9 elements: the bare ratio test at 2 fails ~2.5% of
    draws (scipy: F(9, 9) beyond 4, 2.55%); the rule's 2·w(9) = 6.36 fails them at false_fail_rate(9) = 3.3e-6 — 4,000
    draws expect 102 failures of the first (sd 10) and 0.013 of the second, so none; at 64 elements and above the
    rate is below 1e-15. The stated rates are scipy's, and the simulated ones agree with them."""
    from scipy.stats import f

    g = torch.Generator().manual_seed(1)
    truth = torch.ones(4000, 9, dtype=torch.float64)
    ref = truth + 1e-3 * torch.randn(4000, 9, dtype=torch.float64, generator=g)
    lib = truth + 1e-3 * torch.randn(4000, 9, dtype=torch.float64, generator=g)
    ratio = (ref - truth).norm(dim=1) / (lib - truth).norm(dim=1)
    bare = (ratio > 2).sum().item()
    widened = (ratio > 2 * widening(9)).sum().item()
    assert f.sf(4, 9, 9) == pytest.approx(0.0255, abs=5e-4)
    assert 50 < bare < 160  # binomial(4000, 0.0255): mean 102, sd 10
    assert widened == 0
    assert false_fail_rate(9) == pytest.approx(3.26e-6, rel=1e-2)
    assert false_fail_rate(64) == pytest.approx(7.5e-16, rel=2e-2)
    assert false_fail_rate(1024) < 1e-100 and widening(1024) == pytest.approx(1.10, abs=5e-3)
    # the docstring's numbers, read back
    doc = harness.methods.numerics.__doc__
    assert "1.10 for 1,024" in doc and "7.5e-16 at" in doc and "3.3e-6 at 9" in doc


def test_unknown_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown dtype 'float8'.*float64, float32, bfloat16, float16"):
        harness.methods.numerics.dtype_of("float8")


def naive_low_precision_attention(q, k, v):
    """Every step rounded to the input dtype (what the reference did before it accumulated in float32)."""
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    w = torch.exp(scores - scores.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize("dtype", LOW)
def test_reference_attention_is_at_least_as_accurate_as_torch_in_low_precision(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (4 * torch.randn(2, 4, 197, 64, dtype=torch.float64, generator=g) for _ in range(3))
    truth = F.scaled_dot_product_attention(q, k, v)
    dt = getattr(torch, dtype)
    low = [t.to(dt) for t in (q, k, v)]
    lib = F.scaled_dot_product_attention(*low)
    ref = harness.scaled_dot_product_attention(*low)
    online = harness.reference.online_softmax_attention(*low, block_size=50)
    assert ref.dtype == online.dtype == dt
    assert verdict(dtype, ref, lib, truth)["passed"] and verdict(dtype, online, lib, truth)["passed"]
    # accumulating in float32 makes the reference as accurate as torch's kernel (one output rounding: the
    # errors differ by a few percent at most); the formula rounded at every step is about 2x less accurate,
    # as the explicit path was on the first GPU run
    err = {name: errors(out, truth)["rel_err"] for name, out in
           [("lib", lib), ("ref", ref), ("online", online), ("naive", naive_low_precision_attention(*low))]}
    assert err["ref"] <= 1.05 * err["lib"] and err["online"] <= 1.05 * err["lib"], err
    assert err["naive"] > 1.5 * err["lib"], err


@pytest.mark.parametrize("dtype", LOW)
def test_clip_loss_computes_low_precision_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(64, 512, dtype=torch.float64, generator=g), dim=-1) for _ in range(2))
    dt = getattr(torch, dtype)
    ours = harness.clip_loss(img.to(dt), txt.to(dt), torch.tensor(14.3, dtype=dt))
    assert ours.dtype == torch.float32
    truth = ClipLoss()(img.to(dt).double(), txt.to(dt).double(), torch.tensor(14.3, dtype=dt).double())
    assert abs(ours.item() - truth.item()) / truth.item() < 1e-6  # only float32 round-off on the rounded inputs


def rows_frame(rows):
    df = pd.DataFrame(rows)
    return df[df["dtype"].isin(LOW)]


def test_vit_low_precision_rows_pass_on_cpu():
    lib = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=64, num_classes=10).eval()
    x = torch.randn(7, 3, 64, 64, dtype=torch.float64)  # 70 logits: at least 64 elements judged
    df = rows_frame(agreement.model_rows(lib, x, ["float32", *LOW], torch.device("cpu")))
    assert set(df["check"]) == {"logits", "block"} and set(df["backend"]) >= {"explicit", "math"}
    assert df["passed"].all(), df[~df["passed"]][["dtype", "backend", "stage", "ref_err_vs_fp64", "tolerance"]]
    assert (df["rule"] == harness.methods.numerics.TRUTH_RULE).all()


def test_clip_low_precision_rows_pass_on_cpu():
    config = {"photos": ["astronaut"], "random_inputs": 31, "tokenizer": "ViT-B-32",
              "captions": ["a photo of an astronaut."] + [f"random noise number {i}." for i in range(31)]}
    ctx = Context(device=torch.device("cpu"))
    model = small_open_clip("ViT-S-32", layers=2)
    images, tokens = agreement_clip._inputs(open_clip_transform(model), model.visual.image_size[0], config, 0,
                                             ctx.device)

    def run(m, dt):
        return harness.methods.numerics.capture(agreement_clip._stages(m),
                                        lambda: agreement_clip._outputs(m, images.to(dt), tokens))

    df = rows_frame(harness.methods.numerics.sweep(model, harness.from_open_clip, run, agreement_clip.OUTPUTS, LOW,
                                                   ctx.device, "open_clip"))
    assert df["passed"].all(), df[~df["passed"]][["check", "dtype", "backend", "ref_err_vs_fp64", "tolerance"]]


def test_float32_gradients_are_judged_against_float64():
    lib = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    rows = agreement.gradient_rows(lib, x, ["float32"])  # float64 is computed as the truth even when not asked
    assert {r["dtype"] for r in rows} == {"float32"}
    r = rows[0]
    assert r["check"] == "gradients" and r["passed"] and r["rule"] == harness.methods.numerics.TRUTH_RULE
    assert r["stages_failing"] == 0 and r["ref_err_vs_fp64"] < 1e-5 and r["lib_err_vs_fp64"] < 1e-5
    stages = [s["stage"] for s in rows[1:]]
    assert stages == ["(before the blocks)", "blocks.0", "blocks.1", "(after the blocks)"]
    assert all(s["check"] == "gradient_stage" and s["passed"] and s["n_elements"] >= 64 for s in rows[1:])


@pytest.mark.parametrize("make", [lambda: timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=2),
                                  lambda: small_open_clip("ViT-S-32")], ids=["timm_hybrid", "open_clip"])
def test_cast_is_a_copy_converted_like_to(make):
    """cast(model, dtype) converts each tensor straight into dtype: the same values, dtypes, memory layouts,
    parameter types and names as deepcopy(model).to(dtype), sharing no memory with the master (float64 too)."""
    import copy

    from harness.methods.numerics import cast

    master = make().double().eval()
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        plain, ours = copy.deepcopy(master).to(dtype), cast(master, dtype)
        a, b = plain.state_dict(), ours.state_dict()
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].stride() == b[k].stride() and torch.equal(a[k], b[k]), k
        assert [(n, type(p), p.requires_grad) for n, p in plain.named_parameters()] == \
               [(n, type(p), p.requires_grad) for n, p in ours.named_parameters()]
        master_ptrs = {t.data_ptr() for t in master.state_dict().values()}
        assert not master_ptrs & {t.data_ptr() for t in b.values()}

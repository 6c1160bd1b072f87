import numpy as np
import pytest

from harness import data
from harness.linear_probe import linear_probe, sklearn_probe


@pytest.fixture(scope="module")
def pixels():
    """Raw Fashion-MNIST pixels as features: real data, no model needed."""
    train, test = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
    tr = data.balanced_subset(train.labels, 100, seed=0)
    te = data.balanced_subset(test.labels, 50, seed=0)
    x = lambda d, i: np.asarray(d.dataset[i]["image"], dtype=np.float32).reshape(len(i), -1) / 255  # noqa: E731
    return x(train, tr), train.labels[tr], x(test, te), test.labels[te]


def test_probe_matches_sklearn_on_the_same_strength(pixels):
    xtr, ytr, xte, yte = pixels
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    sk_top1, _ = sklearn_probe(xtr, ytr, xte, yte, res.strength)
    assert abs(res.top1 - sk_top1) <= 0.2
    assert 70 < res.top1 < 95  # raw-pixel logistic regression on Fashion-MNIST is about 80-85 %
    assert res.top1 <= res.top5 and res.top1_ci[0] <= res.top1 <= res.top1_ci[1]
    assert res.strength in res.sweep and len(res.sweep) >= 7
    assert res.predictions.shape == yte.shape


def test_probe_is_deterministic(pixels):
    xtr, ytr, xte, yte = pixels
    a, b = linear_probe(xtr, ytr, xte, yte, seed=1), linear_probe(xtr, ytr, xte, yte, seed=1)
    assert a.top1 == b.top1 and a.strength == b.strength


def test_preconditioning_and_blocks_reach_the_same_optimum(pixels):
    """The preconditioner changes the path, not the problem; features stored in float16 and converted block by
    block to float64 give the float64 fit of the same (float16-rounded) features."""
    import torch

    from harness.linear_probe import fit, spectrum, standardise

    xtr, ytr, _, _ = pixels
    x = torch.as_tensor(standardise(xtr)[0], dtype=torch.float32)
    y = torch.as_tensor(ytr)
    W0, b0, _ = fit(x, y, 10, 0.1, 3000, dtype=torch.float64)
    W1, b1, it1 = fit(x, y, 10, 0.1, 3000, dtype=torch.float64, precondition=spectrum(x))
    # Both stop where the largest gradient entry is below 1e-7 (the preconditioned fit in its own coordinates).
    # Near a flat optimum that leaves the parameters loose (measured: W 3e-4 apart in norm, b 2e-3) but the
    # objective tight: f(w) - f* ≤ ‖g‖² / (2λ) ≈ (1e-7 · √7850)² / 0.2 ≈ 4e-10 for either point.
    def objective(W, b):
        xd = x.double()
        return (torch.nn.functional.cross_entropy(xd @ W + b, y) + 0.1 / 2 * W.square().sum()).item()

    assert abs(objective(W1, b1) - objective(W0, b0)) <= 1e-8
    assert it1 > 0 and (W1 - W0).norm() <= 1e-2 * W0.norm()
    x16 = x.half()
    Wa, ba, _ = fit(x16.double(), y, 10, 0.1, 3000)
    Wb, bb, _ = fit(x16, y, 10, 0.1, 3000, dtype=torch.float64, max_bytes=4096)  # blocks converted on the fly
    assert torch.allclose(Wa, Wb, rtol=0, atol=1e-9) and torch.allclose(ba, bb, rtol=0, atol=1e-9)

import numpy as np
import pytest

from harness import data
from harness.methods.probe import linear_probe, sklearn_probe


@pytest.fixture(scope="module")
def pixels():
    """Raw Fashion-MNIST pixels as features: real data, no model needed."""
    train, test = data.fashion_mnist.read("train"), data.fashion_mnist.read("test")
    tr = data.images.balanced_subset(train.labels, 100, seed=0)
    te = data.images.balanced_subset(test.labels, 50, seed=0)
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

    from harness.methods.probe import fit, spectrum, standardise

    xtr, ytr, _, _ = pixels
    x = torch.as_tensor(standardise(xtr)[0], dtype=torch.float32)
    y = torch.as_tensor(ytr)
    W0, b0, _ = fit(x, y, 10, 0.1, 3000, dtype=torch.float64)
    W1, b1, it1 = fit(x, y, 10, 0.1, 3000, dtype=torch.float64, precondition=spectrum(x))
    # Both stop where the objective changes by less than 1e-10 from one iteration to the next (torch's
    # tolerance_change), before their largest gradient entry reaches 1e-7: measured there 1.4e-6 (W) and 1e-6 to
    # 5e-6 (b, which is not regularised, so the objective is flat along it and ‖g‖²/(2λ) does not bound the gap).
    # That leaves the parameters loose (W 3e-4 apart in norm) and the objective 1e-8 apart (measured 1.3e-8, and
    # 9.9e-9 with the products of the gradient in the other layout); 1e-7 is ten times that, of an objective of 0.49.
    def objective(W, b):
        xd = x.double()
        return (torch.nn.functional.cross_entropy(xd @ W + b, y) + 0.1 / 2 * W.square().sum()).item()

    assert abs(objective(W1, b1) - objective(W0, b0)) <= 1e-7
    assert it1 > 0 and (W1 - W0).norm() <= 1e-2 * W0.norm()
    x16 = x.half()
    Wa, ba, _ = fit(x16.double(), y, 10, 0.1, 3000)
    Wb, bb, _ = fit(x16, y, 10, 0.1, 3000, dtype=torch.float64, max_bytes=4096)  # blocks converted on the fly
    assert torch.allclose(Wa, Wb, rtol=0, atol=1e-9) and torch.allclose(ba, bb, rtol=0, atol=1e-9)


def test_fit_stops_at_a_stationary_point_of_the_stated_objective(pixels):
    """fit() writes the gradient out by hand (classes-major products, blocks of rows); autograd's gradient of the
    objective in its docstring, mean CE + λ/2‖W‖², must vanish where it stops. It stops when its largest gradient
    entry is ≤ 1e-7 or the objective changes by < 1e-10 per iteration (float64): measured there 1e-6 to 3e-6.
    A wrong hand-written gradient leaves it far above: measured 0.19 with the one-hot subtracted from the next
    class, 2.5e-3 with the data term halved. 1e-4 lies between."""
    import torch

    from harness.methods.probe import BLOCK_ROWS, fit, standardise

    xtr, ytr, _, _ = pixels
    n = BLOCK_ROWS + 137  # two blocks, the last one partial
    x = torch.as_tensor(standardise(np.concatenate([xtr, xtr]))[0][:n], dtype=torch.float64)
    y = torch.as_tensor(np.concatenate([ytr, ytr])[:n])
    W, b, _ = fit(x, y, 10, 0.01, 3000)
    W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    (torch.nn.functional.cross_entropy(x @ W + b, y) + 0.01 / 2 * W.square().sum()).backward()
    assert W.grad.abs().max().item() <= 1e-4 and b.grad.abs().max().item() <= 1e-4

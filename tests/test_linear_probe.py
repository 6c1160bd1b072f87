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

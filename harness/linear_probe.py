"""Linear probe: the CLIP paper's protocol (Radford et al., 2021, appendix A.3).

L2-regularised multinomial logistic regression on frozen features, fitted full-batch with L-BFGS in
torch (on the GPU when the features are there). The strength λ is chosen on a validation split held
out from train: a log-spaced sweep, then a finer sweep around the best; the final model is fitted on
train + validation with that λ and scored once on test.

Objective (bias not penalised):  mean_i CE(W x_i + b, y_i) + λ/2 ‖W‖²
scikit-learn's LogisticRegression minimises  C Σ_i CE + ½‖W‖², the same problem with C = 1 / (λ N).
Features are standardised with the mean and standard deviation of the training features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ProbeResult:
    top1: float  # test accuracy, in %
    top5: float
    mean_per_class_recall: float
    strength: float  # the chosen λ
    top1_ci: tuple[float, float]  # bootstrap 95% interval of top1
    predictions: np.ndarray  # test predictions, for image-by-image comparisons
    sweep: dict[float, float] = field(default_factory=dict)  # λ -> validation top-1
    iterations: int = 0


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float, max_iter: int = 1000,
        init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean CE + λ/2‖W‖² with full-batch L-BFGS; returns (W (D, C), b (C,), iterations)."""
    D = x.shape[1]
    W = torch.zeros(D, num_classes, dtype=x.dtype, device=x.device) if init is None else init[0].clone()
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device) if init is None else init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    onehot = F.one_hot(y, num_classes).to(x.dtype)

    @torch.no_grad()
    def closure():
        # The gradient written out: autograd's xᵀ·R is several times slower than (Rᵀ·x)ᵀ on CPU BLAS here.
        logits = x @ W + b
        loss = F.cross_entropy(logits, y) + strength / 2 * W.square().sum()
        R = (logits.softmax(dim=1) - onehot) / len(x)  # (N, C): d mean-CE / d logits
        W.grad = (R.T @ x).T.contiguous() + strength * W
        b.grad = R.sum(0)
        return loss

    opt.step(closure)
    steps = opt.state[opt._params[0]].get("n_iter", 0)
    return W.detach(), b.detach(), steps


def _top1(x, y, W, b) -> float:
    return ((x @ W + b).argmax(1) == y).double().mean().item() * 100


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def bootstrap_ci(correct: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the accuracy, resampling the test set with replacement."""
    rng = np.random.default_rng(seed)
    samples = correct[rng.integers(0, len(correct), size=(n, len(correct)))].mean(1) * 100
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
    num_classes: int | None = None, val_fraction: float = 0.1, strengths: list[float] | None = None,
    seed: int = 0, device: torch.device | str = "cpu", max_iter: int = 3000, sweep_max_iter: int = 200,
) -> ProbeResult:
    """Choose λ on a held-out validation split of train, refit on all of train, score on test.

    Sweep fits run in float32 and stop after `sweep_max_iter` L-BFGS iterations (enough to rank the
    strengths). The final fit runs in float64 to convergence (`max_iter`): then two sets of features that
    differ by float round-off (a reference model and its library twin) give the same predictions."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max()) + 1)
    device = torch.device(device)
    train_x, test_x = standardise(train_x, test_x)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_x))
    n_val = max(1, int(round(val_fraction * len(train_x))))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]

    def t(a, kind=torch.float32):
        return torch.as_tensor(a, device=device, dtype=kind)

    xf, yf = t(train_x[fit_idx]), t(train_y[fit_idx], torch.long)
    xv, yv = t(train_x[val_idx]), t(train_y[val_idx], torch.long)
    sweep: dict[float, float] = {}

    def run_sweep(lams):
        """Fit from the strongest λ down, each fit starting at the previous solution (a regularisation path)."""
        init = None
        for lam in sorted((float(v) for v in lams), reverse=True):
            if lam in sweep:
                continue
            W, b, _ = fit(xf, yf, num_classes, lam, sweep_max_iter, init)
            init = (W, b)
            sweep[lam] = _top1(xv, yv, W, b)
        return max(sweep, key=lambda lam: (sweep[lam], lam))  # ties: the stronger regularisation

    best = run_sweep(strengths or np.logspace(-4, 2, 7))
    best = run_sweep(best * np.logspace(-0.5, 0.5, 5))  # refine around the best

    # the final fit starts from zero, not from the sweep's solution: two feature sets that differ by round-off
    # would start from different points, stop at different points of a flat optimum and disagree on images
    W, b, iters = fit(t(train_x, torch.float64), t(train_y, torch.long), num_classes, best, max_iter)
    logits = t(test_x, torch.float64) @ W + b
    y = t(test_y, torch.long)
    pred = logits.argmax(1)
    correct = (pred == y).cpu().numpy()
    top5 = (logits.topk(min(5, num_classes), dim=1).indices == y[:, None]).any(1).double().mean().item() * 100
    recalls = [correct[test_y == c].mean() for c in np.unique(test_y)]
    return ProbeResult(top1=float(correct.mean() * 100), top5=top5, mean_per_class_recall=float(np.mean(recalls) * 100),
                       strength=best, top1_ci=bootstrap_ci(correct, seed), predictions=pred.cpu().numpy(),
                       sweep=sweep, iterations=iters)


def sklearn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  strength: float, max_iter: int = 3000) -> tuple[float, np.ndarray]:
    """scikit-learn's LogisticRegression(solver="lbfgs") on the same standardised features and the same λ."""
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = standardise(train_x, test_x)
    clf = LogisticRegression(C=1.0 / (strength * len(train_x)), solver="lbfgs", max_iter=max_iter, tol=1e-8)
    clf.fit(train_x, train_y)
    pred = clf.predict(test_x)
    return float((pred == test_y).mean() * 100), pred

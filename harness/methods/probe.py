"""Linear probe: the CLIP paper's protocol (Radford et al., 2021, appendix A.3).

L2-regularised multinomial logistic regression on frozen features, fitted full-batch with L-BFGS in
torch (on the GPU when the features are there; `lbfgs` below reads the device once per evaluation). The
strength λ is chosen on a validation split held out from train: a log-spaced sweep, then a finer sweep around
the best; the final model is fitted on train + validation with that λ and scored once on test.

Objective (bias not penalised):  mean_i CE(W x_i + b, y_i) + λ/2 ‖W‖²
scikit-learn's LogisticRegression minimises  C Σ_i CE + ½‖W‖², the same problem with C = 1 / (λ N).
Features are standardised with the mean and standard deviation of the training features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import paired


@dataclass
class ProbeResult:
    top1: float  # test accuracy, in %
    top5: float
    mean_per_class_recall: float
    strength: float  # the chosen λ
    top1_ci: tuple[float, float]  # bootstrap 95% interval of top1
    predictions: np.ndarray  # test predictions, for image-by-image comparisons
    ranked: np.ndarray | None = None  # (N, ≤5) classes by test logit, best first
    margin: np.ndarray | None = None  # (N,) best logit − second best
    scale: np.ndarray | None = None  # (N,) the largest |logit|: the size round-off is relative to
    sweep: dict[float, float] = field(default_factory=dict)  # λ -> validation top-1
    iterations: int = 0


BLOCK_ROWS = 1024  # rows per block: measured 1.7x faster per evaluation than whole-matrix products here


def _in_dtype(x: torch.Tensor, dtype: torch.dtype, max_bytes: int) -> tuple[torch.Tensor, bool]:
    """x converted to the compute dtype once when that copy fits in max_bytes (else converted block by block in
    every evaluation: a million float16 features are never copied whole into float64), and whether it was."""
    if x.dtype == dtype or x.numel() * dtype.itemsize <= max_bytes:
        return x.to(dtype), True
    return x, False


def spectrum(x: torch.Tensor, max_bytes: int = 2**30) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of the features' second moment xᵀx / N, in float64 (for `fit`'s
    preconditioner), accumulated over blocks of rows."""
    D = x.shape[1]
    cov = torch.zeros(D, D, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), 16 * BLOCK_ROWS):
        xb = x[start: start + 16 * BLOCK_ROWS].double()
        cov += xb.T @ xb
    return torch.linalg.eigh(cov / len(x))


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float, max_iter: int = 1000,
        init: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
        tolerance_grad: float = 1e-7, max_bytes: int = 2**30,
        precondition: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean CE + λ/2‖W‖² with full-batch L-BFGS, computing in `dtype` (x's own by default) whatever
    dtype x is stored in; returns (W (D, C), b (C,), iterations).

    `precondition` = spectrum(x): L-BFGS then runs on V with W = P V, P = (xᵀx / (N·C) + λ I)^(-1/2), which
    approximates the inverse square root of the objective's curvature (the cross-entropy's Hessian at W = 0
    is xᵀx / (N·C) per class). The objective and its optimum are the same; fewer iterations reach it."""
    dtype = dtype or x.dtype
    D, N, C = x.shape[1], len(x), num_classes
    if precondition is not None:
        evals, evecs = precondition
        root = (evals / C + strength).clamp_min(1e-12).sqrt()
        P = ((evecs / root) @ evecs.T).to(dtype)  # symmetric
        P_inv = ((evecs * root) @ evecs.T).to(dtype)
    else:
        P = P_inv = None
    # parameters kept as Wᵀ (C, D): x_b @ Wᵀᵀ and Rᵀ @ x_b are the fast layouts for BLAS with C small; the
    # optimiser sees them as one flat vector θ = [vec(Vᵀ), b]
    Wt0 = torch.zeros(C, D, dtype=dtype, device=x.device) if init is None else init[0].T.to(dtype)
    b0 = torch.zeros(C, dtype=dtype, device=x.device) if init is None else init[1].to(dtype)
    theta = torch.cat([(Wt0 if P_inv is None else Wt0 @ P_inv).flatten(), b0])
    xc, converted = _in_dtype(x, dtype, max_bytes)

    def objective(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The gradient written out (autograd's xᵀ·R is several times slower on CPU BLAS), block by block of
        # rows so that each block of x stays in cache between its two products, classes-major: the logits as
        # Wᵀ·x_bᵀ (C, n) and the gradient as R·x_b, products MKL runs 2-3x faster than x_b·W and Rᵀ·x_b when C is
        # small (measured on 2 AMD EPYC cores: 0.34 vs 0.80 ms for 1,024 × 512 features and 10 classes).
        Vt, b = theta[: C * D].view(C, D), theta[C * D:]
        Wt = Vt if P is None else Vt @ P
        loss = strength / 2 * Wt.square().sum()
        gWt, gb = strength * Wt, torch.zeros_like(b)
        for start in range(0, N, BLOCK_ROWS):
            xb = xc[start: start + BLOCK_ROWS]
            xb = xb if converted else xb.to(dtype)
            yb = y[start: start + BLOCK_ROWS]
            logp = torch.addmm(b[:, None], Wt, xb.T).log_softmax(dim=0)  # (C, n): log-probabilities
            rows = torch.arange(len(yb), device=logp.device)
            loss = loss - logp[yb, rows].sum() / N
            R = logp.exp_()  # d mean-CE / d logits = (softmax - onehot) / N
            R[yb, rows] -= 1
            R /= N
            gWt.addmm_(R, xb)
            gb += R.sum(1)
        return loss, torch.cat([(gWt if P is None else gWt @ P).flatten(), gb])

    with torch.no_grad():
        theta, steps = lbfgs(objective, theta, max_iter, tolerance_grad)
        Vt, b = theta[: C * D].view(C, D), theta[C * D:]
        Wt = Vt if P is None else Vt @ P
    return Wt.T.contiguous(), b.clone(), steps


def host_read(*scalars: torch.Tensor) -> list[float]:
    """The values of 0-d tensors on the host, in one transfer: lbfgs's only synchronisation with the device."""
    return torch.stack(scalars).tolist()


def lbfgs(objective, theta: torch.Tensor, max_iter: int, tolerance_grad: float, tolerance_change: float = 1e-10,
          history_size: int = 20, c1: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Minimise a smooth convex objective(θ) -> (loss, gradient) from θ by L-BFGS (Nocedal & Wright, Numerical
    Optimization, 2nd ed., algorithms 7.4-7.5) with a backtracking line search (sufficient decrease, c1 = 1e-4,
    or, once the loss no longer resolves the decrease, Hager & Zhang's approximate Wolfe conditions; the step halved
    until one holds, at most 10 times); returns (θ, iterations).

    The stopping rules are torch.optim.LBFGS's (largest |gradient| ≤ tolerance_grad, a step or a change of the loss
    below tolerance_change, max_iter iterations), and so is its first step, min(1, 1/‖g‖₁). What differs is where
    the scalars live: the two-loop recursion's dot products, ρ and the initial scaling γ stay on the device, and
    each evaluation of the objective is read on the host once (loss, largest |gradient|, directional derivatives,
    curvature and step size in one .tolist()) — one host-device synchronisation per evaluation, where
    torch.optim.LBFGS with its strong-Wolfe search makes 10 to 16 per iteration (tests/test_probe_syncs.py)."""
    eps = torch.finfo(theta.dtype).eps
    loss, g = objective(theta)
    f, gmax, gsum = host_read(loss, g.abs().max(), g.abs().sum())
    if gmax <= tolerance_grad:
        return theta, 0
    S: list[torch.Tensor] = []  # steps s_k = θ_{k+1} − θ_k
    Y: list[torch.Tensor] = []  # gradient changes y_k = g_{k+1} − g_k
    rho: list[torch.Tensor] = []  # 1 / y_kᵀ s_k, on the device
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        if S:  # two-loop recursion: d = −H g with H₀ = γ I, γ = sᵀy / yᵀy of the newest pair
            q = g.neg()
            alphas = []
            for s, yv, r in zip(reversed(S), reversed(Y), reversed(rho)):
                a = r * s.dot(q)
                q.addcmul_(yv, a, value=-1)
                alphas.append(a)
            d = q.mul_(1 / (rho[-1] * Y[-1].dot(Y[-1])))
            for s, yv, r, a in zip(S, Y, rho, reversed(alphas)):
                d.addcmul_(s, a - r * yv.dot(d))
            t = 1.0
        else:
            d, t = -g, min(1.0, 1.0 / gsum)
        gtd = g.dot(d)
        for _ in range(11):  # backtracking: at most 10 halvings (t ≥ 1/1024 of the first trial; an L-BFGS
            # direction's unit step rarely needs one, and 10 failing means nothing is left to gain at this precision)
            new = theta + t * d
            loss_new, g_new = objective(new)
            yv = g_new - g
            f_new, gtd_v, gtd_new, gmax_new, ys, yy, dmax = host_read(
                loss_new, gtd, g_new.dot(d), g_new.abs().max(), yv.dot(d) * t, yv.dot(yv), d.abs().max())
            decrease = f_new <= f + c1 * t * gtd_v
            # Hager & Zhang's approximate Wolfe conditions (SIAM J. Optim. 16, 2005, eq. 4.1), for when the loss no
            # longer resolves the decrease: the loss within round-off of f and the slope along d flattened
            approximate = f_new <= f + 16 * eps * abs(f) and (2 * c1 - 1) * gtd_v >= gtd_new >= 0.9 * gtd_v
            if gtd_v > -tolerance_change or decrease or approximate:
                break
            t /= 2
        if gtd_v > -tolerance_change or not (decrease or approximate):
            iterations -= 1  # not a descent direction, or no step found: nothing left to gain at this precision
            break
        if ys > eps * yy:  # the curvature pair is kept unless it is round-off (yᵀs > 0: the objective is convex)
            S.append(new - theta)
            Y.append(yv)
            rho.append(1 / yv.dot(S[-1]))
            if len(S) > history_size:
                S.pop(0), Y.pop(0), rho.pop(0)
        theta, g, f_prev, f = new, g_new, f, f_new
        if gmax_new <= tolerance_grad or t * dmax <= tolerance_change or abs(f - f_prev) < tolerance_change:
            break
    return theta, iterations


def _top1(x, y, W, b) -> float:
    return ((x @ W + b).argmax(1) == y).double().mean().item() * 100


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def bootstrap_ci(correct: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the accuracy (%), resampling the test set with replacement
    (harness.methods.paired.bootstrap_interval)."""
    _, lo, hi = paired.bootstrap_interval(np.asarray(correct, np.float64) * 100, reps=n, seed=seed)
    return lo, hi


def validation_split(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, fit rows) of n training rows, as linear_probe holds them out: the first
    max(1, round(val_fraction · n)) of a permutation drawn with `seed`."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return perm[:n_val], perm[n_val:]


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
    num_classes: int | None = None, val_fraction: float = 0.1, strengths: list[float] | None = None,
    seed: int = 0, device: torch.device | str = "cpu", max_iter: int = 3000, sweep_max_iter: int = 200,
    sweep_max_images: int | None = None, log=None,
) -> ProbeResult:
    """Choose λ on a held-out validation split of train, refit on all of train, score on test.

    Sweep fits run in float32 and stop after `sweep_max_iter` L-BFGS iterations (enough to rank the
    strengths). The final fit runs to convergence (`max_iter`), in float32 then polished in float64 (features
    stay float32 in memory; converted by blocks of rows when a float64 copy would not fit): then two sets of
    features that differ by float round-off (a reference model and its library twin) give the same predictions
    unless an image lies on a decision boundary to within that round-off.

    `sweep_max_images` (None: all): the sweep fits a random sample of that many of the fit split's images (at
    ImageNet scale each sweep step over all 1.15M would cost the final fit's); the strength it chooses is carried
    to the full set with C = 1/(λN) held fixed (λ_full = λ_sample · n_sample / N, scikit-learn's convention, under
    which the best regularisation against the summed loss does not move with N). The default profile's sets are
    below any such limit: nothing changes there.

    `log(phase, seconds)`, when given, is called as each phase ends ("sweep", "final fit"): a run stopped at its
    limit still tells where its time went."""
    import time

    clock = time.perf_counter()
    num_classes = num_classes or int(max(train_y.max(), test_y.max()) + 1)
    device = torch.device(device)
    train_x, test_x = standardise(train_x, test_x)
    val_idx, fit_idx = validation_split(len(train_x), val_fraction, seed)
    carry = 1.0  # λ_full = λ_sweep · n_sweep / n_fit: 1 when the sweep sees the whole fit split
    if sweep_max_images and sweep_max_images < len(fit_idx):
        carry, fit_idx = sweep_max_images / len(fit_idx), fit_idx[:sweep_max_images]

    def t(a, kind=torch.float32):
        return torch.as_tensor(a, device=device, dtype=kind)

    xf, yf = t(train_x[fit_idx]), t(train_y[fit_idx], torch.long)
    xv, yv = t(train_x[val_idx]), t(train_y[val_idx], torch.long)
    sweep: dict[float, float] = {}

    spectrum_fit = spectrum(xf)

    def run_sweep(lams):
        """Fit from the strongest λ down, each fit starting at the previous solution (a regularisation path)."""
        init = None
        for lam in sorted((float(v) for v in lams), reverse=True):
            if lam in sweep:
                continue
            W, b, _ = fit(xf, yf, num_classes, lam, sweep_max_iter, init, precondition=spectrum_fit)
            init = (W, b)
            sweep[lam] = _top1(xv, yv, W, b)
        return max(sweep, key=lambda lam: (sweep[lam], lam))  # ties: the stronger regularisation

    best = run_sweep(strengths or np.logspace(-4, 2, 7))
    best = run_sweep(best * np.logspace(-0.5, 0.5, 5)) * carry  # refine around the best
    if log is not None:
        log("sweep", time.perf_counter() - clock)
        clock = time.perf_counter()

    # the final fit starts from zero, not from the sweep's solution (two feature sets that differ by round-off
    # would start from different points of the path and stop at different points of a flat optimum): float32
    # to a gradient of 1e-5, then polished in float64 to 1e-7, where the optimum (unique: the objective is
    # strictly convex) is reached whatever the float32 phase's end point
    x_all, y_all = t(train_x), t(train_y, torch.long)
    spectrum_all = spectrum(x_all)
    W, b, iters32 = fit(x_all, y_all, num_classes, best, max_iter, tolerance_grad=1e-5, precondition=spectrum_all)
    W, b, iters64 = fit(x_all, y_all, num_classes, best, max_iter, init=(W, b), dtype=torch.float64,
                        precondition=spectrum_all)
    iters = iters32 + iters64
    if log is not None:
        log("final fit", time.perf_counter() - clock)
    logits = t(test_x, torch.float64) @ W + b
    y = t(test_y, torch.long)
    pred = logits.argmax(1)
    best_values, ranked = logits.topk(min(5, num_classes), dim=1)
    margin = (best_values[:, 0] - best_values[:, 1]) if num_classes > 1 else torch.zeros(len(pred))
    correct = (pred == y).cpu().numpy()
    top5 = (ranked == y[:, None]).any(1).double().mean().item() * 100
    recalls = [correct[test_y == c].mean() for c in np.unique(test_y)]
    return ProbeResult(top1=float(correct.mean() * 100), top5=top5, mean_per_class_recall=float(np.mean(recalls) * 100),
                       strength=best, top1_ci=bootstrap_ci(correct, seed), predictions=pred.cpu().numpy(),
                       ranked=ranked.cpu().numpy(), margin=margin.cpu().numpy(),
                       scale=logits.abs().amax(dim=1).cpu().numpy(), sweep=sweep, iterations=iters)


def sklearn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  strength: float, max_iter: int = 3000) -> tuple[float, np.ndarray]:
    """scikit-learn's LogisticRegression(solver="lbfgs") on the same standardised features and the same λ."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train_x, test_x = standardise(train_x, test_x)
    clf = LogisticRegression(C=1.0 / (strength * len(train_x)), solver="lbfgs", max_iter=max_iter, tol=1e-8)
    with threadpool_limits(torch.get_num_threads()):  # numpy's BLAS shares the cores torch was given, no more
        clf.fit(train_x, train_y)
    pred = clf.predict(test_x)
    return float((pred == test_y).mean() * 100), pred

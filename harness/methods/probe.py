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

import warnings
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
    iterations: int = 0  # the final fit's L-BFGS iterations (float32 and float64)
    converged: bool = True  # whether the final fit met its stopping rule (gradient ≤ gradient_bound)
    gradient: float = 0.0  # the final fit's ‖∇f‖₂ where it stopped
    gradient_bound: float = 0.0  # rule(tolerance, f): the bound it had to reach


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


@dataclass
class Fitted:
    """Fits at K strengths: W (K, D, C), b (K, C), and for each strength its L-BFGS iterations, whether the
    stopping rule was met (`converged`), the final objective and its gradient's norm."""

    W: torch.Tensor
    b: torch.Tensor
    iterations: list[int]
    converged: list[bool]
    loss: list[float]
    gradient: list[float]
    preconditioned: bool = True  # final_fit: which parametrisation it chose


def rule(tolerance: float, loss: float) -> float:
    """The stopping rule's bound on ‖∇f‖₂ (the gradient in W and b, unpreconditioned): `tolerance` relative to the
    objective's scale, max(1, f). f is a mean cross-entropy plus the penalty: log C at W = 0, so the bound is
    `tolerance` for a model that fits and grows with f only where the loss itself is large."""
    return tolerance * max(1.0, abs(loss))


def fit_many(x: torch.Tensor, y: torch.Tensor, num_classes: int, strengths, max_iter: int = 1000,
             init: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
             tolerance: float = 1e-7, max_bytes: int = 2**30,
             precondition: tuple[torch.Tensor, torch.Tensor] | None = None, rotate: bool = False,
             plain: list[bool] | None = None) -> Fitted:
    """Minimise mean CE + λ_k/2‖W_k‖² for every strength λ_k at once with full-batch L-BFGS, computing in `dtype`
    (x's own by default) whatever dtype x is stored in. One parameter block per strength; each evaluation makes one
    pair of products over the features for all of them (the logits of every strength as one (K·C, D) × (D, n)
    product, the gradient as one (K·C, n) × (n, D)), each strength its own line search, history and stop.
    `init`: (W (K, D, C) or (D, C), b (K, C) or (C,)) to start from, zero by default.

    `precondition` = spectrum(x): L-BFGS runs on V with W = P_k V, P_k = (xᵀx / (N·C) + λ_k I)^(-1/2), which
    approximates the inverse square root of the objective's curvature (the cross-entropy's Hessian at W = 0 is
    xᵀx / (N·C) per class). With `rotate`, the features are rotated once into the eigenbasis of xᵀx (a copy of x,
    so only when it fits in max_bytes), where every P_k is diagonal: a scaling of each coordinate instead of a
    (D, D) product per strength and evaluation. The objective and its optimum are the same; fewer iterations reach
    it — where the curvature is like that at W = 0; near a nearly separable optimum it is not, and the plain
    parametrisation can converge several times faster (final_fit chooses). `plain[k]`: strength k unpreconditioned
    (P_k = I), in the same basis. Stops a strength when ‖∇f‖₂ ≤ rule(tolerance, f), or after max_iter iterations,
    or when no step along the L-BFGS direction decreases f at this precision (then `converged` says whether the
    rule was met)."""
    dtype = dtype or x.dtype
    strengths = [float(v) for v in np.atleast_1d(strengths)]
    K, D, N, C = len(strengths), x.shape[1], len(x), num_classes
    dev = x.device
    lam = torch.tensor(strengths, dtype=dtype, device=dev)
    evecs = None
    if precondition is not None:
        evals, evecs = precondition
        root = (evals[None, :] / C + torch.tensor(strengths, dtype=evals.dtype, device=dev)[:, None]).clamp_min(
            1e-12).sqrt()  # (K, D)
        if plain is not None:
            root[torch.as_tensor(plain, device=dev)] = 1.0
        rotate = rotate and x.numel() * torch.finfo(dtype).bits // 8 <= max_bytes
        if rotate:
            p, P = (1 / root).to(dtype), None  # (K, D): W' = V ⊙ p in the eigenbasis
        else:  # computed in float64, so that a warm start's round trip W -> V -> W keeps W
            P = torch.stack([(evecs / r) @ evecs.T for r in root])  # (K, D, D), symmetric
            P_inv = torch.stack([(evecs * r) @ evecs.T for r in root])
    else:
        rotate, P = False, None
    if rotate:
        basis = evecs.to(dtype)
        xc, converted = torch.cat([x[i: i + 16 * BLOCK_ROWS].to(dtype) @ basis
                                   for i in range(0, N, 16 * BLOCK_ROWS)]), True
    else:
        xc, converted = _in_dtype(x, dtype, max_bytes)
    # parameters kept as Wᵀ (C, D) per strength: x_b @ Wᵀᵀ and Rᵀ @ x_b are the fast layouts for BLAS with C small;
    # the optimiser sees each strength's as one flat vector θ_k = [vec(V_kᵀ), b_k]
    Wt0 = torch.zeros(K, C, D, dtype=dtype, device=dev)
    b0 = torch.zeros(K, C, dtype=dtype, device=dev)
    if init is not None:
        W_init, b_init = init
        Wt0 += W_init.to(dtype).transpose(-1, -2)
        b0 += b_init.to(dtype)
    if rotate:
        V0 = (Wt0 @ basis) / p[:, None, :]
    elif P is not None:
        V0 = (Wt0.double() @ P_inv).to(dtype)
        P = P.to(dtype)
    else:
        V0 = Wt0
    theta = torch.cat([V0.flatten(1), b0], dim=1)  # (K, C·D + C)

    def weights(theta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Vt, b = theta[:, : C * D].view(-1, C, D), theta[:, C * D:]
        if rotate:
            return Vt * p[idx, None, :], b
        return (Vt if P is None else Vt @ P[idx]), b

    def objective(theta: torch.Tensor, idx: torch.Tensor):
        # The gradient written out (autograd's xᵀ·R is several times slower on CPU BLAS), block by block of
        # rows so that each block of x stays in cache between its two products, classes-major: the logits as
        # Wᵀ·x_bᵀ (K·C, n) and the gradient as R·x_b, products MKL runs 2-3x faster than x_b·W and Rᵀ·x_b when C is
        # small (measured on 2 AMD EPYC cores: 0.34 vs 0.80 ms for 1,024 × 512 features and 10 classes).
        k = len(idx)
        Wt, b = weights(theta, idx)
        lk = lam[idx]
        loss = lk / 2 * Wt.square().sum((1, 2))
        gWt, gb = lk[:, None, None] * Wt, torch.zeros_like(b)
        flat = Wt.reshape(k * C, D)
        for start in range(0, N, BLOCK_ROWS):
            xb = xc[start: start + BLOCK_ROWS]
            xb = xb if converted else xb.to(dtype)
            yb = y[start: start + BLOCK_ROWS]
            n = len(yb)
            logp = (flat @ xb.T).view(k, C, n).add_(b[:, :, None]).log_softmax(dim=1)  # (k, C, n)
            rows = torch.arange(n, device=dev)
            loss = loss - logp[:, yb, rows].sum(1) / N
            R = logp.exp_()  # d mean-CE / d logits = (softmax - onehot) / N
            R[:, yb, rows] -= 1
            R /= N
            gWt.view(k * C, D).addmm_(R.view(k * C, n), xb)
            gb += R.sum(2)
        # ‖∇f‖ in W and b: rotation does not change a norm, so the eigenbasis's gradient has the original's
        gnorm = (gWt.square().sum((1, 2)) + gb.square().sum(1)).sqrt()
        if rotate:
            gV = gWt * p[idx, None, :]
        else:
            gV = gWt if P is None else gWt @ P[idx]
        return loss, torch.cat([gV.flatten(1), gb], dim=1), gnorm

    with torch.no_grad():
        theta, out = lbfgs(objective, theta, max_iter, tolerance)
        Wt, b = weights(theta, torch.arange(K, device=dev))
        if rotate:
            Wt = Wt @ basis.T  # back from the eigenbasis
    return Fitted(Wt.transpose(1, 2).contiguous(), b.clone(), *out)


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float, max_iter: int = 1000,
        init: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
        tolerance: float = 1e-7, max_bytes: int = 2**30,
        precondition: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One strength's fit (fit_many): (W (D, C), b (C,), iterations)."""
    out = fit_many(x, y, num_classes, [strength], max_iter, init, dtype, tolerance, max_bytes, precondition)
    return out.W[0], out.b[0], out.iterations[0]


def host_read(*values: torch.Tensor) -> list:
    """The values of tensors of one shape (0-d, or one entry per strength) on the host, in one transfer:
    lbfgs's only synchronisation with the device."""
    return torch.stack(values).tolist()


def lbfgs(objective, theta: torch.Tensor, max_iter: int, tolerance: float, history_size: int = 20,
          c1: float = 1e-4) -> tuple[torch.Tensor, tuple[list, list, list, list]]:
    """Minimise K smooth convex objectives at once by L-BFGS (Nocedal & Wright, Numerical Optimization, 2nd ed.,
    algorithms 7.4-7.5), each with its own history, backtracking line search (sufficient decrease, c1 = 1e-4, or,
    once the loss no longer resolves the decrease, Hager & Zhang's approximate Wolfe conditions; the step halved
    until one holds, at most 10 times) and stop. objective(θ[idx], idx) -> (losses (k,), gradients (k, P), the
    norms the stopping rule reads (k,)) for the strengths idx still running. θ: (K, P). Returns (θ, (iterations,
    converged, losses, gradient norms), per strength).

    A strength stops when its gradient norm ≤ rule(tolerance, f) (converged), after max_iter iterations, or when
    no step decreases f at this precision (not a descent direction, or ten halvings without a decrease): the
    result says whether the rule was met. The first step is torch.optim.LBFGS's, min(1, 1/‖g‖₁). The two-loop
    recursion's dot products, ρ and the initial scaling γ stay on the device, and each evaluation of the objective
    is read on the host once (each strength's loss, gradient norm, directional derivatives, curvature and step size
    in one .tolist()) — one host-device synchronisation per evaluation, where torch.optim.LBFGS with its
    strong-Wolfe search makes 10 to 16 per iteration (tests/test_probe_syncs.py)."""
    K = theta.shape[0]
    eps = torch.finfo(theta.dtype).eps
    every = torch.arange(K, device=theta.device)
    loss, g, gnorm = objective(theta, every)
    f, gn, gsum = (np.atleast_1d(np.asarray(v, dtype=float)) for v in host_read(loss, gnorm, g.abs().sum(1)))
    iterations = np.zeros(K, dtype=int)
    converged = np.array([gn[k] <= rule(tolerance, f[k]) for k in range(K)])
    running = ~converged
    # the last history_size iterations' curvature pairs, (K, P) each: steps s = θ_{k+1} − θ_k and gradient changes
    # y = g_{k+1} − g_k, a zero row (ρ = 0: it changes nothing) where a strength kept none that iteration
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []  # 1 / yᵀs (K,)
    gamma = torch.ones(K, dtype=theta.dtype, device=theta.device)  # H₀ = γ I: sᵀy / yᵀy of the newest pair
    has_pair = np.zeros(K, dtype=bool)
    while running.any():
        # two-loop recursion for every strength (a zero pair changes nothing): d = −H g
        q = g.neg()
        alphas = []
        for s, yv, r in zip(reversed(S), reversed(Y), reversed(rho)):
            a = r * (s * q).sum(1)
            q.addcmul_(yv, a[:, None], value=-1)
            alphas.append(a)
        d = q.mul_(gamma[:, None])
        for s, yv, r, a in zip(S, Y, rho, reversed(alphas)):
            d.addcmul_(s, (a - r * (yv * d).sum(1))[:, None])
        t = np.where(has_pair, 1.0, np.minimum(1.0, 1.0 / np.maximum(gsum, 1e-300)))
        gtd = (g * d).sum(1)
        searching = running.copy()
        accepted = np.zeros(K, dtype=bool)
        new_theta, new_g, new_f, new_gn = theta.clone(), g.clone(), f.copy(), gn.copy()
        pairs = []
        for _ in range(11):  # backtracking: at most 10 halvings (t ≥ 1/1024 of the first trial; an L-BFGS
            # direction's unit step rarely needs one, and 10 failing means nothing is left to gain at this precision)
            idx_np = np.flatnonzero(searching)
            if not len(idx_np):
                break
            idx = torch.as_tensor(idx_np, device=theta.device)
            tt = torch.as_tensor(t[idx_np], dtype=theta.dtype, device=theta.device)
            trial = theta[idx] + tt[:, None] * d[idx]
            loss_t, g_t, gnorm_t = objective(trial, idx)
            yv = g_t - g[idx]
            rows = host_read(loss_t, gtd[idx], (g_t * d[idx]).sum(1), gnorm_t, (yv * d[idx]).sum(1) * tt,
                             (yv * yv).sum(1), g_t.abs().sum(1))
            f_t, gtd_v, gtd_new, gn_t, ys, yy, gsum_t = (np.atleast_1d(np.asarray(v, dtype=float)) for v in rows)
            for j, k in enumerate(idx_np):
                descent = gtd_v[j] < 0
                decrease = f_t[j] <= f[k] + c1 * t[k] * gtd_v[j]
                # Hager & Zhang's approximate Wolfe conditions (SIAM J. Optim. 16, 2005, eq. 4.1), for when the loss
                # no longer resolves the decrease: the loss within round-off of f and the slope along d flattened
                approximate = (f_t[j] <= f[k] + 16 * eps * abs(f[k])
                               and (2 * c1 - 1) * gtd_v[j] >= gtd_new[j] >= 0.9 * gtd_v[j])
                if not descent:
                    searching[k] = False  # not a descent direction: nothing left to gain at this precision
                elif decrease or approximate:
                    searching[k], accepted[k] = False, True
                    new_theta[k], new_g[k] = trial[j], g_t[j]
                    new_f[k], new_gn[k], gsum[k] = f_t[j], gn_t[j], gsum_t[j]
                    if ys[j] > eps * yy[j]:  # the pair is kept unless it is round-off (yᵀs > 0: convex)
                        pairs.append((k, trial[j] - theta[k], yv[j], 1 / ys[j]))
                        gamma[k] = ys[j] / yy[j]
                        has_pair[k] = True
                else:
                    t[k] /= 2
        if pairs:  # this iteration's curvature pairs, one new slot of the ring (zero rows: no pair for that strength)
            S.append(torch.zeros_like(theta))
            Y.append(torch.zeros_like(theta))
            rho.append(torch.zeros(K, dtype=theta.dtype, device=theta.device))
            for k, s_k, y_k, r in pairs:
                S[-1][k], Y[-1][k], rho[-1][k] = s_k, y_k, r
            if len(S) > history_size:
                S.pop(0), Y.pop(0), rho.pop(0)
        stalled = running & ~accepted
        running &= accepted
        iterations[accepted] += 1
        theta, g, f, gn = new_theta, new_g, new_f, new_gn
        for k in np.flatnonzero(running):
            if gn[k] <= rule(tolerance, f[k]):
                converged[k], running[k] = True, False
            elif iterations[k] >= max_iter:
                running[k] = False
        for k in np.flatnonzero(stalled):
            converged[k] = gn[k] <= rule(tolerance, f[k])
    return theta, (iterations.tolist(), converged.tolist(), f.tolist(), gn.tolist())


CHOOSE_AFTER = 20  # iterations the final fit runs preconditioned and plain side by side before it chooses


def final_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float,
              start: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 3000,
              tolerance: float = 1e-7) -> Fitted:
    """linear_probe's final fit: L-BFGS in float32 from `start` to rule(1e-6, f), preconditioned or plain (the one
    with the lower objective after CHOOSE_AFTER iterations of both side by side), in the features' eigenbasis,
    then polished in float64 until ‖∇f‖₂ ≤ rule(tolerance, f). Its iterations are every phase's; a polish that
    stops short of its rule (max_iter, or no decrease left at float64's precision) warns and says so (converged
    False)."""
    precondition = spectrum(x)
    # preconditioned or plain: twenty iterations of both, side by side (one pair of products for the two), and the
    # one with the lower objective goes on (module docstring of fit_many: which converges faster depends on the data)
    trial = fit_many(x, y, num_classes, [strength, strength], CHOOSE_AFTER, start, tolerance=max(tolerance, 1e-6),
                     precondition=precondition, rotate=True, plain=[False, True])
    k = min((0, 1), key=lambda i: (not trial.converged[i], trial.loss[i]))
    chosen = {"precondition": precondition, "rotate": True, "plain": [bool(k)]}
    first = fit_many(x, y, num_classes, [strength], max_iter, (trial.W[k], trial.b[k]), tolerance=max(tolerance, 1e-6),
                     **chosen)
    final = fit_many(x, y, num_classes, [strength], max_iter, (first.W, first.b), dtype=torch.float64,
                     tolerance=tolerance, **chosen)
    final.preconditioned = not k
    polish = final.iterations[0]
    final.iterations = [trial.iterations[k] + first.iterations[0] + polish]
    if not final.converged[0]:
        warnings.warn(f"linear probe: the final fit at λ = {strength:.3g} stopped with ‖∇f‖ = {final.gradient[0]:.2g}"
                      f" > {rule(tolerance, final.loss[0]):.2g}, its stopping rule, after {final.iterations[0]} "
                      "iterations: " + ("max_iter reached" if polish >= max_iter else
                                        "no further decrease at float64's precision"), RuntimeWarning, stacklevel=3)
    return final


def _top1(x, y, W, b) -> float:
    return ((x @ W + b).argmax(1) == y).double().mean().item() * 100


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Each feature centred and scaled by train's mean and standard deviation, computed in at least float32 (a
    float16 array's squared deviations overflow past 256)."""
    kind = np.promote_types(np.asarray(train).dtype, np.float32)
    train = np.asarray(train, dtype=kind)
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(np.asarray(a, dtype=kind) - mean) / std for a in (train, *others)]


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
    sweep_max_images: int | None = None, log=None, tolerance: float = 1e-7, sweep_tolerance: float = 1e-4,
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
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def run_sweep(lams, start=None):
        """Fit every new λ at once (fit_many: one pair of products over the features per evaluation for all of
        them), in the eigenbasis, from `start` (a solution) or zero; score each on the validation split."""
        new = [float(v) for v in lams if float(v) not in sweep]
        if new:
            out = fit_many(xf, yf, num_classes, new, sweep_max_iter, start, tolerance=sweep_tolerance,
                           precondition=spectrum_fit, rotate=True)
            for k, lam in enumerate(new):
                solutions[lam] = (out.W[k], out.b[k])
                sweep[lam] = _top1(xv, yv, out.W[k], out.b[k])
        return max(sweep, key=lambda lam: (sweep[lam], lam))  # ties: the stronger regularisation

    best = run_sweep(strengths or np.logspace(-4, 2, 7))
    best = run_sweep(best * np.logspace(-0.5, 0.5, 5), start=solutions[best])  # refine around the best
    best *= carry
    if log is not None:
        log("sweep", time.perf_counter() - clock)
        clock = time.perf_counter()

    # the final fit on all of train (final_fit): float32, then polished in float64 to `tolerance`
    x_all, y_all = t(train_x), t(train_y, torch.long)
    # from zero, not from the sweep's solution: two feature sets that differ by round-off (a reference twin and its
    # library model) would start from different points and stop, within the rule, at different points of a flat
    # optimum (1,000 classes of one image each: predictions that differ beyond round-off, tests/test_rehearsal.py)
    final = final_fit(x_all, y_all, num_classes, best, None, max_iter, tolerance)
    W, b = final.W[0], final.b[0]
    iters, converged = final.iterations[0], final.converged[0]
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
                       scale=logits.abs().amax(dim=1).cpu().numpy(), sweep=sweep, iterations=iters,
                       converged=converged, gradient=final.gradient[0], gradient_bound=rule(tolerance, final.loss[0]))


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

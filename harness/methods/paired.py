"""The harness's statistics, in one place: intervals, paired tests of two evaluations, and the family-wise control
of a regression gate (harness.tools.diff; data_scale's tables; the probe's interval).

    t_interval(values, level)              mean and Student-t interval of a sample (seeds of one configuration)
    bootstrap_interval(values, ...)        mean and percentile interval of a per-image quantity, the images
                                           resampled with replacement (one accuracy; a paired difference)
    mcnemar(a_correct, b_correct)          discordant counts and McNemar's exact p: under "no difference" each of
                                           the n = n_ab + n_ba images that one run gets right and the other wrong
                                           is as likely either way, so n_ba ~ Binomial(n, 1/2): the two-sided p
                                           (scipy's binomtest; statsmodels' mcnemar(exact=True) gives the same)
                                           and the one-sided p's of "B worse", P(X <= n_ba), and "B better"
    bootstrap_diff(a_correct, b_correct)   B − A accuracy (points) with its paired bootstrap interval
    seed_test(a, b, seeds_a, seeds_b)      B − A over training runs, the seed the unit: paired t by seed when both
                                           sides ran the same seeds, else Welch's t; one-sided p of "B worse"
    holm(p)                                Holm–Bonferroni adjusted p-values: rejecting every adjusted p < α keeps
                                           the chance of any false rejection over the family at α
    agreement(ref, other, labels)          two models' predictions: how many agree, differ, and McNemar's p
    flips_beyond_round_off(...)            predictions that differ where round-off cannot have moved them
    moved_classes(labels, a, b)            the classes whose correct count moved most
    paired_t(diffs)                        mean and Student-t interval of paired differences
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of `values`; NaN bounds with fewer than two."""
    v = np.asarray(values, np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def paired_t(diffs, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences (data_scale: two architectures on the same subsets, seed by seed)."""
    return t_interval(diffs, level)


def bootstrap_interval(values, reps: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a per-image quantity: the percentile interval of its mean over `reps` resamples of the
    images (drawn in blocks of 256 resamples, (256, n) indices at a time)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no images to resample")
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    for start in range(0, reps, 256):
        k = min(256, reps - start)
        means[start: start + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images: {a.shape} vs {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    two, worse, better = (float(v) for v in mcnemar_counts(only_a, only_b))
    return {"only_a_correct": only_a, "only_b_correct": only_b, "mcnemar_p": two, "p_worse": worse,
            "p_better": better}


def mcnemar_counts(only_a, only_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """McNemar's exact p-values from the discordant counts (arrays allowed): X = only_b ~ Binomial(n, 1/2) with
    n = only_a + only_b under "no difference". Two-sided: 2·min(P(X <= x), P(X >= x)), capped at 1 (the binomial
    test's two-sided p, the distribution being symmetric); "B worse": P(X <= x); "B better": P(X >= x). 1 when n = 0."""
    only_a, only_b = np.asarray(only_a), np.asarray(only_b)
    n = only_a + only_b
    worse = np.where(n > 0, stats.binom.cdf(only_b, n, 0.5), 1.0)
    better = np.where(n > 0, stats.binom.sf(only_b - 1, n, 0.5), 1.0)
    return np.minimum(1.0, 2 * np.minimum(worse, better)), worse, better


def bootstrap_diff(a_correct: np.ndarray, b_correct: np.ndarray, reps: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """B − A accuracy (points) and a percentile interval from `reps` resamples of the images (both runs see the
    same resample)."""
    d = np.asarray(b_correct, np.float64) - np.asarray(a_correct, np.float64)
    mean, lo, hi = bootstrap_interval(d, reps, seed, level)
    return {"diff": 100.0 * mean, "diff_ci_low": 100.0 * lo, "diff_ci_high": 100.0 * hi}


def seed_test(a, b, seeds_a, seeds_b, level: float = 0.95) -> dict:
    """B − A of one configuration's accuracies over its training runs (one per seed): paired by seed when both
    sides ran the same seeds (Student's t on the differences), else Welch's t on the two samples; the one-sided p
    of "B worse" and of "B better", and the interval of the difference at `level`. With one run on a side there is
    no test: the training noise of the configuration is unknown. With no spread, the same difference every time is
    a sure sign when it is not zero and no evidence either way when it is (p_worse = p_better = 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = {"seeds_a": len(a), "seeds_b": len(b), "acc_a": float(a.mean()), "acc_b": float(b.mean()),
           "diff": float(b.mean() - a.mean())}
    if len(a) < 2 or len(b) < 2:
        return {**out, "test": "none", "p_worse": float("nan"), "p_better": float("nan"),
                "diff_ci_low": float("nan"), "diff_ci_high": float("nan")}
    if sorted(seeds_a) == sorted(seeds_b):
        order_a, order_b = np.argsort(seeds_a), np.argsort(seeds_b)
        d = b[order_b] - a[order_a]
        mean, lo, hi = t_interval(d, level)
        sd = d.std(ddof=1)
        if sd == 0:
            worse, better = _sure(mean)
        else:
            t = mean / (sd / np.sqrt(len(d)))
            worse, better = float(stats.t.cdf(t, len(d) - 1)), float(stats.t.sf(t, len(d) - 1))
        return {**out, "test": f"paired t over {len(d)} seeds", "p_worse": worse, "p_better": better,
                "diff_ci_low": lo, "diff_ci_high": hi}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    diff = out["diff"]
    if se == 0:
        (worse, better), half = _sure(diff), 0.0
    else:
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
        worse, better = float(stats.t.cdf(diff / se, dof)), float(stats.t.sf(diff / se, dof))
        half = float(stats.t.ppf((1 + level) / 2, dof) * se)
    return {**out, "test": f"Welch t ({len(a)} vs {len(b)} seeds)", "p_worse": worse, "p_better": better,
            "diff_ci_low": diff - half, "diff_ci_high": diff + half}


def _sure(diff: float) -> tuple[float, float]:
    """(p_worse, p_better) of a difference with no spread: 0 on its side, 1 on the other; 1 and 1 when it is 0."""
    return (0.0 if diff < 0 else 1.0), (0.0 if diff > 0 else 1.0)


def holm(p) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (in the input order): the k-th smallest of m is multiplied by m − k + 1,
    made monotone and capped at 1. NaN entries (rows with no test) are left out of the family and stay NaN."""
    p = np.asarray(p, np.float64)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if not m:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def agreement(ref: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    """Two models' top-1 predictions on the same images: the fraction that agree, how many differ, and McNemar's
    exact p on their correctness ("identical predictions" as a measured count)."""
    return {"prediction_agreement": float((ref == other).mean()), "predictions_differ": int((ref != other).sum()),
            "mcnemar_p": mcnemar(ref == labels, other == labels)["mcnemar_p"]}


def flips_beyond_round_off(pred: np.ndarray, other: np.ndarray, margin: np.ndarray, scale: np.ndarray,
                           rho: float) -> int:
    """How many images two models that must agree to a relative round-off `rho` predict differently although the
    first model's margin there (best logit − second best) exceeds 2·rho·(its largest |logit|): moving every logit by
    at most rho of that size changes the arg-max only where the margin is below twice it, so a flip beyond is a
    real difference (a wrong conversion), not round-off."""
    differ = np.asarray(pred) != np.asarray(other)
    return int(np.sum(differ & (np.asarray(margin) > 2 * rho * np.asarray(scale))))


def agreement_verdict(lib: dict, ref: dict, measured: float, what: str, autocast: str | None = None) -> dict:
    """The verdict of a reference against the library model it was converted from, which must agree: `what`, their
    measured relative difference (features, or zero-shot classifiers), within float32's tolerance (the agreement
    suite's, harness.methods.numerics.TOL), and no prediction that differs where the library's margin exceeds twice
    that tolerance of the image's largest |logit| (flips_beyond_round_off). `lib` and `ref` hold "predictions",
    "margin" and "scale" per image. Not judged under autocast: mixed precision has no such bound."""
    from .numerics import TOL

    if autocast:
        return {"agreement_rule": f"not judged under autocast ({autocast})", "passed": float("nan")}
    rho = TOL["float32"]
    beyond = flips_beyond_round_off(lib["predictions"], ref["predictions"], lib["margin"], lib["scale"], rho)
    return {"flips_beyond_round_off": beyond, "passed": bool(measured <= rho and beyond == 0),
            "agreement_rule": f"{what} <= {rho:g} and no differing prediction at a margin > 2*{rho:g}*max|logit|"}


def moved_classes(labels: np.ndarray, a_correct: np.ndarray, b_correct: np.ndarray, k: int = 3,
                  names: list[str] | None = None) -> str:
    """"class: ±n" for the k classes whose number of correctly classified images changed most (B − A)."""
    labels = np.asarray(labels)
    delta = {int(c): int(np.sum(b_correct[labels == c]) - np.sum(a_correct[labels == c])) for c in np.unique(labels)}
    moved = sorted((c for c in delta if delta[c]), key=lambda c: (-abs(delta[c]), c))[:k]
    return ", ".join(f"{names[c] if names else c}: {delta[c]:+d}" for c in moved)

"""Paired comparisons of two evaluations on the same images: did a change move accuracy beyond noise?

    agreement(ref, other, labels)          two models' predictions: how many agree, differ, and McNemar's p
    mcnemar(a_correct, b_correct)          discordant counts and McNemar's exact p: under "no difference" each of
                                           the n = n_ab + n_ba images that one run gets right and the other wrong
                                           is as likely either way, so n_ba ~ Binomial(n, 1/2) (scipy's binomtest,
                                           two-sided; statsmodels' mcnemar(exact=True) gives the same p)
    bootstrap_diff(a_correct, b_correct)   the accuracy difference B − A and its 95% paired bootstrap interval
                                           (the images resampled together, so both runs see the same resample)
    moved_classes(labels, a, b)            the classes whose correct count moved most
    paired_t(diffs)                        mean and 95% Student-t interval of paired differences (data_scale:
                                           two architectures trained on the same subsets, seed by seed)
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images: {a.shape} vs {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = float(stats.binomtest(only_b, n, 0.5).pvalue) if n else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "mcnemar_p": p}


def agreement(ref: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    """Two models' top-1 predictions on the same images: the fraction that agree, how many differ, and McNemar's
    exact p on their correctness ("identical predictions" as a measured count)."""
    return {"prediction_agreement": float((ref == other).mean()), "predictions_differ": int((ref != other).sum()),
            "mcnemar_p": mcnemar(ref == labels, other == labels)["mcnemar_p"]}


def bootstrap_diff(a_correct: np.ndarray, b_correct: np.ndarray, reps: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """B − A accuracy (points) and a percentile interval from `reps` resamples of the images."""
    d = np.asarray(b_correct, np.float64) - np.asarray(a_correct, np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no images to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    for start in range(0, reps, 256):  # resample indices in blocks: (256, n) at a time
        k = min(256, reps - start)
        means[start: start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": 100.0 * d.mean(), "diff_ci_low": 100.0 * lo, "diff_ci_high": 100.0 * hi}


def moved_classes(labels: np.ndarray, a_correct: np.ndarray, b_correct: np.ndarray, k: int = 3,
                  names: list[str] | None = None) -> str:
    """"class: ±n" for the k classes whose number of correctly classified images changed most (B − A)."""
    labels = np.asarray(labels)
    delta = {int(c): int(np.sum(b_correct[labels == c]) - np.sum(a_correct[labels == c])) for c in np.unique(labels)}
    moved = sorted((c for c in delta if delta[c]), key=lambda c: (-abs(delta[c]), c))[:k]
    return ", ".join(f"{names[c] if names else c}: {delta[c]:+d}" for c in moved)


def paired_t(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences; the interval is NaN with fewer than two pairs."""
    d = np.asarray(diffs, np.float64)
    m = float(d.mean())
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return m, m - half, m + half

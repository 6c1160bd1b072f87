"""Each DataComp task's main metric, computed as DataComp computes it, and its averages.

    acc1                    top-1 accuracy (CLIP_benchmark's zeroshot_classification.accuracy)
    mean_per_class_recall   scikit-learn's balanced_accuracy_score: the mean over the classes present of each
                            class's recall (eval_utils/wds_eval.py)
    F1-macro_all            WILDS' F1(average="macro"): scikit-learn's f1_score over the labels present in y_true
                            (wilds.common.metrics.all_metrics.F1; iWildCam)
    acc_worst_region        accuracy in each group of the metadata's group column, the lowest over non-empty groups
    acc_wg, acc_top5_wg     (WILDS' standard_group_eval / compute_group_wise: FMoW by region, GeoDE by region,
                            Dollar Street's top-5 accuracy by income_ds)
    mean_recall@1           the mean of image-to-text and text-to-image recall@1 (eval_utils/retr_eval.py)
    jaccard_score_10-12     WinoGAViL: per cue, the n candidate images most similar to it against its n
                            associations, Jaccard index; the mean over the instances with 10 or 12 candidates
                            (eval_utils/wino_eval.py)

All values are fractions, as DataComp reports them; the suites show them ×100 beside their other percentages.
tests/test_datacomp.py checks them against scikit-learn and hand-worked examples; tests/test_datacomp_parity.py
against CLIP_benchmark's and WILDS' own code run as DataComp runs it.
"""

from __future__ import annotations

import numpy as np


def accuracy(top: np.ndarray, y: np.ndarray) -> float:
    """Top-k accuracy: top is (N,) predictions or (N, k) ranked ones."""
    top = np.asarray(top).reshape(len(y), -1)
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


def mean_per_class_recall(pred: np.ndarray, y: np.ndarray) -> float:
    pred, y = np.asarray(pred), np.asarray(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def macro_f1(pred: np.ndarray, y: np.ndarray) -> float:
    """F1 of each class present in y (2·TP / (2·TP + FP + FN), 0 when it has none), averaged."""
    pred, y = np.asarray(pred), np.asarray(y)
    scores = []
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def worst_group(top: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, dict]:
    """The lowest accuracy over the groups that hold an example, and each group's (accuracy, count)."""
    top = np.asarray(top).reshape(len(y), -1)
    hit = (top == np.asarray(y)[:, None]).any(axis=1)
    groups = np.asarray(groups)
    per = {int(g): (float(hit[groups == g].mean()), int((groups == g).sum())) for g in np.unique(groups)}
    return min(a for a, _ in per.values()), per


def jaccard_10_12(scores: list[float], candidates: list[int]) -> float:
    """WinoGAViL's main metric from each instance's Jaccard index and number of candidate images."""
    scores, candidates = np.asarray(scores, dtype=float), np.asarray(candidates)
    kept = scores[candidates >= 10]
    return float(kept.mean()) if len(kept) else float("nan")


def winogavil_instance(similarity: np.ndarray, is_association: np.ndarray) -> float:
    """One WinoGAViL instance: the k candidates most similar to the cue (k = its number of associations) against
    the associations, as the Jaccard index of the two sets (scikit-learn's jaccard_score on the binary vectors)."""
    truth = np.asarray(is_association, dtype=bool)
    k = int(truth.sum())
    chosen = np.zeros_like(truth)
    if k:  # a stable sort: DataComp's np.argsort (quicksort) can differ from it only on exactly tied scores
        chosen[np.argsort(similarity, kind="stable")[-k:]] = True
    union = np.sum(truth | chosen)
    return float(np.sum(truth & chosen) / union) if union else 0.0


def main_metric(metric: str, top5: np.ndarray, y: np.ndarray, metadata: np.ndarray | None = None,
                group_column: int | None = None) -> float:
    """A classification task's main metric from its ranked predictions (N, k) and labels."""
    top5 = np.asarray(top5).reshape(len(y), -1)
    pred = top5[:, 0]
    if metric == "acc1":
        return accuracy(pred, y)
    if metric == "mean_per_class_recall":
        return mean_per_class_recall(pred, y)
    if metric == "F1-macro_all":
        return macro_f1(pred, y)
    if metric in ("acc_worst_region", "acc_wg", "acc_top5_wg"):
        if metadata is None or group_column is None:
            raise ValueError(f"{metric} needs each example's metadata group")
        groups = np.asarray(metadata)[:, group_column]
        return worst_group(top5[:, :5] if metric == "acc_top5_wg" else pred, y, groups)[0]
    raise ValueError(f"unknown metric {metric!r}")


def aggregate(scores: dict[str, float], groups: dict[str, tuple[str, ...]], n_tasks: int) -> dict[str, float]:
    """aggregate_scores.py: ImageNet's score, each group's mean and the unweighted mean over every task — NaN
    where a task it needs is missing (the average needs all n_tasks)."""
    out = {"ImageNet": scores.get("ImageNet 1k", float("nan"))}
    for group, names in groups.items():
        out[group] = float(np.mean([scores[n] for n in names])) if all(n in scores for n in names) else float("nan")
    out["Average"] = float(np.mean(list(scores.values()))) if len(scores) == n_tasks else float("nan")
    return out

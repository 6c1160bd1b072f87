"""Checkpoint sweeps: one model entry, several checkpoints — a row per checkpoint with its step, a plot of each
metric against the step, and paired comparisons between consecutive checkpoints.

    --set 'models=[{"model": "open_clip:ViT-B-32", "weights": "ckpts/epoch_*.pt"}]'
    --set 'models=[{"model": "python:mypkg:build", "weights": ["ckpt/step_1000.pt", "ckpt/step_2000.pt"]}]'

A declaration whose `weights` is a glob pattern or a list is expanded, before any work, into one declaration per
file, sorted by step: the step is the last number in the file's name (epoch_12.pt -> 12), or its position in the
list when a name has none; each gets the id "<id>@<step>" and keeps `sweep` (the declaration's id) and `step` for
the tables. A pattern that matches nothing, or two files with one step, is refused naming them.

Consecutive checkpoints are compared image by image on the same test images (McNemar's exact test on their top-1
correctness, harness.methods.paired: each checkpoint is a fixed model, so images are the unit) in
<suite>_sweep_pairs; <suite>_sweep.png draws each data set's metric against the step.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..infra.suite import ConfigError, Table

METRICS = ("top1", "mean_R@1", "main_metric")  # the first a row has is plotted and compared


def _files(weights, where: str) -> list[Path]:
    if isinstance(weights, list):
        files = [Path(w) for w in weights]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{where}: weights {', '.join(missing)} not found")
        return files
    files = sorted(Path(p) for p in glob.glob(str(weights)))
    if not files:
        raise ConfigError(f"{where}: weights pattern {weights!r} matches no file (a glob such as "
                          "'ckpts/epoch_*.pt', relative to the current folder)")
    return files


def _step(path: Path, position: int) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else position


def is_sweep(weights) -> bool:
    return isinstance(weights, list) or (isinstance(weights, str) and any(c in weights for c in "*?["))


def expand(config: dict) -> dict:
    """config with every sweep declaration in config["models"] expanded (module docstring); others as they are."""
    declared = config.get("models")
    if not isinstance(declared, list) or not any(isinstance(m, dict) and is_sweep(m.get("weights"))
                                                 for m in declared):
        return config
    from .. import models

    out = []
    for entry in declared:
        if not (isinstance(entry, dict) and is_sweep(entry.get("weights"))):
            out.append(entry)
            continue
        base = models.parse({k: v for k, v in entry.items() if k != "weights"}).id
        files = _files(entry["weights"], f"model {base!r}")
        steps = [_step(f, i) for i, f in enumerate(files)]
        if len(set(steps)) != len(steps):
            dup = sorted({s for s in steps if steps.count(s) > 1})
            raise ConfigError(f"model {base!r}: several checkpoints have step {dup[0]} "
                              f"({', '.join(str(f) for f, s in zip(files, steps) if s == dup[0])}); name them so "
                              "that the last number in each file name is its step")
        for step, f in sorted(zip(steps, files)):
            out.append({**entry, "id": f"{base}@{step}", "weights": str(f), "sweep": base, "step": step})
    return {**config, "models": out}


def annotate(rows: list[dict], config: dict) -> list[dict]:
    """Each row of a swept checkpoint with its `sweep` and `step`."""
    members = {m["id"]: (m["sweep"], m["step"]) for m in config.get("models", [])
               if isinstance(m, dict) and "sweep" in m}
    if not members:
        return rows
    return [{**r, "sweep": members[r["model"]][0], "step": members[r["model"]][1]} if r.get("model") in members
            else r for r in rows]


def tables(rows: list[dict], suite: str, out_dir: Path) -> list[Table]:
    """<suite>_sweep (a row per checkpoint and data set, plotted against the step) and <suite>_sweep_pairs."""
    df = pd.DataFrame([r for r in rows if "sweep" in r and r.get("dataset") != "mean"])
    if df.empty:
        return []
    metric = next((m for m in METRICS if m in df and df[m].notna().any()), None)
    if metric is None:
        return []
    keys = [k for k in ("sweep", "library", "dataset", "task", "templates") if k in df]
    df = df[df[metric].notna()].sort_values([*keys, "step"], kind="stable").reset_index(drop=True)
    cols = [*keys, "step", "model", metric, *[c for c in ("top5", "mean_per_class_recall", "images") if c in df]]
    pairs = _pairs(df, keys, metric, Path(out_dir))
    note = (f"`{metric}` of each checkpoint of a sweep (harness.run.sweeps: the step is the last number in the "
            "checkpoint's file name).")
    out = [Table(f"{suite}_sweep", df[cols], f"{suite}: checkpoint sweep", f"{suite}'s {metric} by checkpoint step",
                 cols, note, plot=lambda d, path, m=metric, k=keys: _plot(d, path, m, k))]
    if len(pairs):
        out.append(Table(f"{suite}_sweep_pairs", pairs, f"{suite}: consecutive checkpoints, image by image",
                         "each checkpoint against the one before it on the same test images (McNemar's exact test)",
                         list(pairs.columns),
                         "Each checkpoint is a fixed model: images are the unit. `p_worse` / `p_better`: one-sided "
                         "p of the later checkpoint being worse / better (harness.methods.paired.mcnemar); no "
                         "family-wise correction here — `python -m harness diff` gates with Holm over rows."))
    return out


def _pairs(df: pd.DataFrame, keys: list[str], metric: str, out_dir: Path) -> pd.DataFrame:
    from ..infra import predictions
    from ..methods import paired

    rows = []
    for group, g in df.groupby(keys, sort=False, dropna=False):
        g = g.sort_values("step")
        for (_, a), (_, b) in zip(g.iloc[:-1].iterrows(), g.iloc[1:].iterrows()):
            row = {**dict(zip(keys, group if isinstance(group, tuple) else (group,))), "step_a": a["step"],
                   "step_b": b["step"], f"{metric}_a": a[metric], f"{metric}_b": b[metric],
                   "difference": b[metric] - a[metric]}
            if isinstance(a.get("predictions"), str) and isinstance(b.get("predictions"), str):
                pa, pb = (predictions.read(out_dir / r["predictions"]) for r in (a, b))
                common = np.intersect1d(pa["index"], pb["index"])
                ca = predictions.correct(pa.set_index("index").loc[common].reset_index())
                cb = predictions.correct(pb.set_index("index").loc[common].reset_index())
                row.update(images=len(common), **paired.mcnemar(ca, cb))
            rows.append(row)
    return pd.DataFrame(rows)


def _plot(df: pd.DataFrame, path: Path, metric: str, keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for group, g in df.groupby(keys, sort=False, dropna=False):
        label = " / ".join(str(v) for v in (group if isinstance(group, tuple) else (group,)) if v == v)
        ax.plot(g["step"], g[metric], marker="o", label=label)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Per-image predictions of a classification row, kept beside the tables so two runs can be compared image by image.

An evaluator attaches them to a row (`attach`): for every evaluated image its index in the split, its true label,
its five highest-scoring classes (best first) and the score margin between the first two. The runner takes them
off the rows before the tables are built (`write`): each row's go to results/predictions/<suite>/<id>.parquet,
written atomically, and the row's `predictions` column names that file (relative to the results folder).

<id> is a hash of what the row evaluates — suite, model, library, the declared weights ("random", a tag,
"trained (...)", or "file" for any checkpoint file), data set, task, templates, architecture, configured size, seed —
never a measured count, nor the weights' bytes or the code, so the same row of two runs (a new checkpoint, a
retrained model, a new data pipeline, a new torch) has the same file name in both folders: `python -m harness diff`
pairs them by it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_bytes
from .results import stable_hash

KEY = "_predictions"  # the row key the evaluators fill and the runner takes off
FOLDER = "predictions"
# the row fields that say what a row evaluates (those present are hashed into its id)
# (declared, never measured: a count of images read would turn one skipped image into another row)
ID_FIELDS = ("model", "library", "weights", "dataset", "task", "templates", "architecture", "per_class", "seed")


def attach(row: dict, index, label, ranked, margin) -> dict:
    """`row` with its predictions: index (N,), label (N,), ranked (N, k) classes best first, margin (N,)."""
    ranked = np.asarray(ranked).reshape(len(label), -1)
    row[KEY] = {"index": np.asarray(index, dtype=np.int64).tolist(), "label": np.asarray(label).astype(int).tolist(),
                "top5": ranked[:, :5].astype(int).tolist(),
                "margin": np.asarray(margin, dtype=np.float64).round(6).tolist()}
    return row


def margins(scores) -> tuple[np.ndarray, np.ndarray]:
    """(top-5 classes best first, margin = best score − second best) of an (N, C) score array."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :5]
    top = np.take_along_axis(s, order, axis=1)
    return order, (top[:, 0] - top[:, 1]) if s.shape[1] > 1 else np.zeros(len(s))


WEIGHT_FILES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def weights_identity(weights) -> str:
    """What a row's declared weights say it evaluates: "random", a pretrained tag, "trained (...)" — or "file" for a
    checkpoint file, whichever file: the same row of two runs that load two checkpoints pairs up (diff then compares
    the two fixed models image by image, and says their hashes differ)."""
    w = str(weights)
    return "file" if "/" in w or w.endswith(WEIGHT_FILES) else w


def row_id(suite: str, row: dict) -> str:
    fields = {k: row[k] for k in ID_FIELDS if k in row and row[k] == row[k]}
    if "weights" in fields:
        fields["weights"] = weights_identity(fields["weights"])
    return stable_hash({"suite": suite, **fields})


def frame(p: dict) -> pd.DataFrame:
    top5 = np.asarray(p["top5"], dtype=np.int32).reshape(len(p["label"]), -1)
    return pd.DataFrame({"index": np.asarray(p["index"], dtype=np.int64),
                         "label": np.asarray(p["label"], dtype=np.int32),
                         **{f"top{k + 1}": top5[:, k] for k in range(top5.shape[1])},
                         "margin": np.asarray(p["margin"], dtype=np.float32)})


def write(rows: list[dict], out_dir: Path, suite: str) -> list[dict]:
    """The rows without their predictions, each that had some naming its parquet file (written atomically)."""
    out = []
    for row in rows:
        if KEY not in row:
            out.append(row)
            continue
        row = dict(row)
        p = row.pop(KEY)
        rel = Path(FOLDER) / suite / f"{row_id(suite, row)}.parquet"
        buf = io.BytesIO()
        frame(p).to_parquet(buf, index=False, compression="zstd")
        atomic_write_bytes(Path(out_dir) / rel, buf.getvalue())
        out.append({**row, "predictions": str(rel)})
    return out


def read(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def correct(df: pd.DataFrame) -> np.ndarray:
    """Whether each image's top-1 class is its label."""
    return df["top1"].to_numpy() == df["label"].to_numpy()

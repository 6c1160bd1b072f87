"""Did a change move accuracy beyond noise? Two runs compared image by image.

    python -m harness diff results_before/ results_after/                  every row present in both
    python -m harness diff before/:zero_shot:3 after/:zero_shot:3          one row of each (its number in the
                                                                           suite's table, or its predictions id)
    python -m harness diff before/ after/ --fail-if-worse                  exit 1 when B is worse beyond α

A and B are result folders written by `python -m harness run` (each classification row names its per-image
predictions: harness.infra.predictions). Rows are paired by what they evaluate (the predictions id: suite,
model, library, data set, templates, architecture, size, seed — not the weights). For each pair on the same
images: both accuracies, the difference B − A with a 95% paired bootstrap interval, the discordant counts and
McNemar's exact p (harness.methods.paired), how many top-1 predictions differ, and the classes that moved most.
A pair whose images or labels differ is refused, with the reason, and counts in no verdict. The table is written
as diff.csv and diff.md (--out); `--fail-if-worse` makes the exit status 1 when some row of B is worse than A with
McNemar's p < α (default 0.05): a regression gate for a CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..infra import predictions, results
from ..infra.results import write_table
from ..infra.suite import ConfigError
from ..methods import paired

LABEL_FIELDS = ("model", "library", "dataset", "templates", "architecture", "train_images", "seed")


def _rows(folder: Path) -> dict[str, tuple[str, dict]]:
    """{predictions id: (suite, row)} of every table row in `folder` that names its predictions."""
    out = {}
    for csv in sorted(folder.glob("*.csv")):
        df = pd.read_csv(csv)
        if "predictions" not in df:
            continue
        for i, row in df[df["predictions"].notna()].iterrows():
            rel = Path(row["predictions"])
            out[rel.stem] = (rel.parts[1], {"table": csv.stem, "row": i, **row.to_dict()})
    return out


def _select(spec: str) -> tuple[Path, dict[str, tuple[str, dict]]]:
    """A folder's rows, or the one row FOLDER:SUITE:ROW names."""
    if Path(spec).is_dir():
        folder = Path(spec)
        rows = _rows(folder)
        if not rows:
            raise ConfigError(f"{folder}: no table there names per-image predictions (a results folder written by "
                              "python -m harness run has a predictions column in its classification tables)")
        return folder, rows
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not Path(parts[0]).is_dir():
        raise ConfigError(f"{spec!r}: expected a results folder, or FOLDER:SUITE:ROW (ROW: the row's number in the "
                          "suite's table, or its predictions id)")
    folder, suite, which = Path(parts[0]), parts[1], parts[2]
    rows = {k: v for k, v in _rows(folder).items() if v[0] == suite}
    chosen = {k: v for k, v in rows.items() if k == which or str(v[1]["row"]) == which}
    if len(chosen) != 1:
        raise ConfigError(f"{spec!r}: no row {which!r} of suite {suite!r} with predictions in {folder} (rows: "
                          + ", ".join(f"{v[1]['row']} ({k})" for k, v in list(rows.items())[:8]) + ")")
    return folder, chosen


def compare(a_path: Path, b_path: Path, alpha: float = 0.05, reps: int = 2000, seed: int = 0) -> dict:
    """The paired comparison of two prediction files; {"refused": reason} when their images differ."""
    da, db = predictions.read(a_path), predictions.read(b_path)
    if len(da) != len(db) or not np.array_equal(da["index"].to_numpy(), db["index"].to_numpy()):
        common = len(np.intersect1d(da["index"], db["index"]))
        return {"images": len(db), "refused": f"images differ: A has {len(da)}, B has {len(db)}, {common} in both "
                                              "(the same images, in the same order, are needed)"}
    if not np.array_equal(da["label"].to_numpy(), db["label"].to_numpy()):
        n = int(np.sum(da["label"].to_numpy() != db["label"].to_numpy()))
        return {"images": len(db), "refused": f"labels differ on {n} of the {len(db)} images"}
    ca, cb = predictions.correct(da), predictions.correct(db)
    out = {"images": len(da), "acc_a": 100.0 * ca.mean(), "acc_b": 100.0 * cb.mean(),
           **paired.bootstrap_diff(ca, cb, reps=reps, seed=seed), **paired.mcnemar(ca, cb),
           "predictions_differ": int(np.sum(da["top1"].to_numpy() != db["top1"].to_numpy())),
           "classes_moved": paired.moved_classes(da["label"].to_numpy(), ca, cb)}
    significant = out["mcnemar_p"] < alpha
    out["verdict"] = ("B worse" if out["diff"] < 0 else "B better") if significant else "no significant change"
    return out


def diff(a: str, b: str, alpha: float = 0.05, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    folder_a, rows_a = _select(a)
    folder_b, rows_b = _select(b)
    named = not (Path(a).is_dir() and Path(b).is_dir())
    if named and not (len(rows_a) == len(rows_b) == 1 and not Path(a).is_dir() and not Path(b).is_dir()):
        raise ConfigError("name two folders, or two rows (FOLDER:SUITE:ROW each)")
    pairs = [(next(iter(rows_a)), next(iter(rows_b)))] if named else [(k, k) for k in rows_a if k in rows_b]
    out = []
    for ka, kb in pairs:
        suite, ra = rows_a[ka]
        rb = rows_b[kb][1]
        label = {f: ra[f] for f in LABEL_FIELDS if f in ra and ra[f] == ra[f]}
        out.append({"suite": suite, "table": ra["table"], "row_a": ra["row"], "row_b": rb["row"], **label,
                    **compare(folder_a / ra["predictions"], folder_b / rb["predictions"], alpha, reps, seed)})
    if not named:  # rows of one run only: listed, compared with nothing
        for rows, side, col in ((rows_a, "A", "row_a"), (rows_b, "B", "row_b")):
            other = rows_b if side == "A" else rows_a
            for k in sorted(rows.keys() - other.keys()):
                suite, r = rows[k]
                out.append({"suite": suite, "table": r["table"], col: r["row"],
                            **{f: r[f] for f in LABEL_FIELDS if f in r and r[f] == r[f]},
                            "refused": f"only in {side}"})
    return pd.DataFrame(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness diff", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the baseline: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("b", help="the run compared with it: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("--alpha", type=float, default=0.05, help="McNemar's level for a verdict (default 0.05)")
    p.add_argument("--fail-if-worse", action="store_true", help="exit 1 when a row of B is worse than A at α")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("diff"), help="folder for diff.csv and diff.md (default diff/)")
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha}: a level between 0 and 1")
    df = diff(args.a, args.b, args.alpha, args.reps, args.seed)
    if df.empty:
        raise ConfigError(f"{args.a} and {args.b} share no row with predictions")
    # how the table was made: this code, these libraries, the command's settings
    df = df.assign(**{k: v for k, v in results.provenance(
        {"a": args.a, "b": args.b, "alpha": args.alpha, "reps": args.reps}, "cpu", args.seed).items()
        if k not in ("device",)})
    cols = [c for c in ("suite", *LABEL_FIELDS, "images", "acc_a", "acc_b", "diff", "diff_ci_low", "diff_ci_high",
                        "only_a_correct", "only_b_correct", "mcnemar_p", "predictions_differ", "verdict",
                        "classes_moved", "refused") if c in df]
    notes = (f"A: {args.a}; B: {args.b}. `diff`: accuracy of B minus A (points) with a 95% paired bootstrap "
             f"interval ({args.reps} resamples of the images); `only_a_correct` / `only_b_correct`: the discordant "
             f"images; `mcnemar_p`: McNemar's exact test on them; verdict at α = {args.alpha}; `classes_moved`: "
             "class index: change in correctly classified images. Refused rows compare nothing.")
    write_table(df, args.out, "diff", "Paired comparison of two runs", cols, notes)
    compared = df[df.get("refused", pd.Series(index=df.index)).isna()] if "refused" in df else df
    worse = compared[compared.get("verdict") == "B worse"] if "verdict" in compared else compared.iloc[:0]
    print(f"{len(compared)} row(s) compared, {len(df) - len(compared)} refused; {len(worse)} worse in B at "
          f"alpha={args.alpha} -> {args.out / 'diff.md'}")
    for _, r in worse.iterrows():
        print(f"  worse: {r.get('suite')} {', '.join(str(r[f]) for f in LABEL_FIELDS if f in r and r[f] == r[f])}: "
              f"{r['diff']:+.2f} points [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}], p={r['mcnemar_p']:.2g}",
              file=sys.stderr)
    return 1 if args.fail_if_worse and len(worse) else 0

"""Did a change move accuracy beyond noise? Two runs compared — a regression gate that can sit in a CI.

    python -m harness diff results_before/ results_after/                  every row present in both
    python -m harness diff before/:zero_shot:3 after/:zero_shot:3          one row of each (its number in the
                                                                           suite's table, or its predictions id)
    python -m harness diff before/ after/ --fail-if-worse                  the gate: exit 1 when B is worse

A and B are result folders written by `python -m harness run` (each classification row names its per-image
predictions: harness.infra.predictions). Rows are paired by what they evaluate (the predictions id: suite, model,
library, declared weights, data set, task, templates, architecture, size, seed — never a measured count).

Two kinds of row, two tests, each row naming its own (`unit`, `test`):
- **The same weights on both sides** (a model loaded from its declaration: a tag, a file, a seeded
  initialisation — a new data pipeline, a new torch, a refactor of the evaluation): the images are the unit.
  McNemar's exact test on the images one side gets right and the other wrong, and the paired bootstrap interval of
  B − A.
- **Weights a suite trains** (data_scale's runs, the zero-shot suite's own CLIP, a probe of a data_scale model):
  two trainings of one configuration differ by their training noise, which McNemar over images would read as a
  regression. The seed is the unit: the configuration's per-seed accuracies, paired by seed when both sides ran the
  same seeds (Student's t), else Welch's t; with one training run on a side, "inconclusive: one training run per
  side" and no verdict.

Family-wise control: every compared row's one-sided p ("B worse"; and "B better" for the verdict's other side) is
adjusted by Holm–Bonferroni over all compared rows, so `--fail-if-worse` raises a false alarm on an unchanged
evaluation with probability at most α over the whole comparison (tests/test_gate.py simulates it). Intervals are at
level 1 − α.

The gate fails closed: a row of A that B lacks, a row refused (other images or labels), or no row compared at all
fail it (exit 1, with the reason); `--allow-missing` lets missing and refused rows pass for exploration (nothing
compared still fails). The table: diff.csv and diff.md (--out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..infra import predictions, results
from ..infra.results import write_table
from ..infra.suite import ConfigError
from ..methods import paired
from .args import Parser

LABEL_FIELDS = ("model", "library", "weights", "dataset", "task", "templates", "architecture", "per_class", "seed")
INCONCLUSIVE = "inconclusive: one training run per side"


def trained(suite: str, row: dict) -> bool:
    """Whether the row's weights come from a training run a suite made (the seed, not the image, is its unit)."""
    return suite == "data_scale" or str(row.get("weights", "")).startswith("trained")


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
    lost = [v[1]["predictions"] for v in out.values() if not (folder / v[1]["predictions"]).is_file()]
    if lost:
        raise ConfigError(f"{folder}: its tables name {len(lost)} predictions file(s) that are not there (e.g. "
                          f"{folder / lost[0]}): copy the whole results folder, its predictions/ included")
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


def _pair(a_path: Path, b_path: Path):
    """(A, B) prediction frames of the same images and labels, or a refusal."""
    da, db = predictions.read(a_path), predictions.read(b_path)
    if len(da) != len(db) or not np.array_equal(da["index"].to_numpy(), db["index"].to_numpy()):
        common = len(np.intersect1d(da["index"], db["index"]))
        return None, {"images": len(db), "refused": f"images differ: A has {len(da)}, B has {len(db)}, {common} in "
                                                    "both (the same images, in the same order, are needed)"}
    if not np.array_equal(da["label"].to_numpy(), db["label"].to_numpy()):
        n = int(np.sum(da["label"].to_numpy() != db["label"].to_numpy()))
        return None, {"images": len(db), "refused": f"labels differ on {n} of the {len(db)} images"}
    return (da, db), None


def compare(a_path: Path, b_path: Path, alpha: float = 0.05, reps: int = 2000, seed: int = 0) -> dict:
    """Images as the unit: the paired comparison of two prediction files of the same weights identity."""
    frames, refused = _pair(a_path, b_path)
    if refused:
        return refused
    da, db = frames
    ca, cb = predictions.correct(da), predictions.correct(db)
    m = paired.mcnemar(ca, cb)
    return {"unit": "images", "test": f"McNemar exact, one-sided, over {len(da)} images; paired bootstrap interval",
            "images": len(da), "acc_a": 100.0 * ca.mean(), "acc_b": 100.0 * cb.mean(),
            **paired.bootstrap_diff(ca, cb, reps=reps, seed=seed, level=1 - alpha), **m,
            "predictions_differ": int(np.sum(da["top1"].to_numpy() != db["top1"].to_numpy())),
            "classes_moved": paired.moved_classes(da["label"].to_numpy(), ca, cb)}


def compare_seeds(a: list[tuple[int, Path]], b: list[tuple[int, Path]], alpha: float = 0.05) -> dict:
    """The seed as the unit: one configuration's runs (seed, predictions file) on each side."""
    acc = {}
    for side, runs in (("a", a), ("b", b)):
        acc[side] = [100.0 * predictions.correct(predictions.read(p)).mean() for _, p in runs]
    (_, pa), (_, pb) = sorted(a)[0], sorted(b)[0]  # every run of a configuration sees the same test images
    _, refused = _pair(pa, pb)
    if refused:
        return {**refused, "refused": refused["refused"]}
    r = paired.seed_test(acc["a"], acc["b"], [s for s, _ in a], [s for s, _ in b], level=1 - alpha)
    seeds = f"{','.join(str(s) for s, _ in sorted(a))} vs {','.join(str(s) for s, _ in sorted(b))}"
    if r["test"] == "none":
        return {**r, "unit": "seeds", "seeds": seeds, "verdict": INCONCLUSIVE, "p_worse": np.nan, "p_better": np.nan,
                "test": "none: the training noise of the configuration is unknown with one run a side"}
    return {**r, "unit": "seeds", "seeds": seeds, "p_better": 1.0 - r["p_worse"],
            "test": f"{r['test']} (weights trained by the suite: training noise, not images, is the spread)"}


def _weights(ra: dict, rb: dict) -> dict:
    """Whether the two rows carry the same weights (their hashes, where the table has them), and B's declared weights
    where they differ from A's (another checkpoint file)."""
    out = {"b_weights": rb["weights"]} if "weights" in ra and ra.get("weights") != rb.get("weights") else {}
    if ra.get("weights_hash") == ra.get("weights_hash") and "weights_hash" in rb:
        out["weights_equal"] = ra["weights_hash"] == rb["weights_hash"]
    return out


def _label(row: dict, fields=LABEL_FIELDS) -> dict:
    return {f: row[f] for f in fields if f in row and row[f] == row[f]}


def _configuration(suite: str, row: dict) -> str:
    """A trained row's configuration: what it evaluates, its seed aside."""
    return results.stable_hash({"suite": suite, **_label(row, [f for f in predictions.ID_FIELDS if f != "seed"])})


def diff(a: str, b: str, alpha: float = 0.05, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    folder_a, rows_a = _select(a)
    folder_b, rows_b = _select(b)
    named = not (Path(a).is_dir() and Path(b).is_dir())
    if named and not (not Path(a).is_dir() and not Path(b).is_dir()):
        raise ConfigError("name two folders, or two rows (FOLDER:SUITE:ROW each)")
    out = []
    if named:
        (suite, ra), (_, rb) = next(iter(rows_a.values())), next(iter(rows_b.values()))
        label = {**_label(ra), **{f"b_{k}": v for k, v in _label(rb).items() if _label(ra).get(k) != v}}
        where = {"suite": suite, "table": ra["table"], "row_a": ra["row"], "row_b": rb["row"], **label}
        if trained(suite, ra) or trained(*next(iter(rows_b.values()))):
            seeds = [(int(ra.get("seed", 0)), folder_a / ra["predictions"])], \
                [(int(rb.get("seed", 0)), folder_b / rb["predictions"])]
            out.append({**where, **compare_seeds(*seeds, alpha)})
        else:
            out.append({**where, **{k: v for k, v in _weights(ra, rb).items() if k != "b_weights"},
                        **compare(folder_a / ra["predictions"], folder_b / rb["predictions"], alpha, reps, seed)})
        return verdicts(pd.DataFrame(out), alpha)
    # trained rows: by configuration (what the row evaluates, its seed aside), whichever seeds each side ran
    groups: dict[str, dict] = {}
    for side, rows, folder in (("a", rows_a, folder_a), ("b", rows_b, folder_b)):
        for suite, r in rows.values():
            if trained(suite, r):
                g = groups.setdefault(_configuration(suite, r), {"suite": suite, "row": r, "a": [], "b": []})
                g[side].append((int(r.get("seed", 0)), folder / r["predictions"]))
    for g in groups.values():
        r = g["row"]
        where = {"suite": g["suite"], "table": r["table"], **_label(r, [f for f in LABEL_FIELDS if f != "seed"])}
        if g["a"] and g["b"]:
            out.append({**where, **compare_seeds(g["a"], g["b"], alpha)})
        else:
            side = "A" if g["a"] else "B"
            out.append({**where, "refused": f"only in {side}" + (" (B lost it)" if side == "A" else "")})
    # the others: the same weights identity on both sides, images the unit
    fixed_a = {k: v for k, v in rows_a.items() if not trained(*v)}
    fixed_b = {k: v for k, v in rows_b.items() if not trained(*v)}
    for k in [k for k in fixed_a if k in fixed_b]:
        suite, ra = fixed_a[k]
        rb = fixed_b[k][1]
        out.append({"suite": suite, "table": ra["table"], "row_a": ra["row"], "row_b": rb["row"], **_label(ra),
                    **_weights(ra, rb),
                    **compare(folder_a / ra["predictions"], folder_b / rb["predictions"], alpha, reps, seed)})
    for rows, side, col in ((fixed_a, "A", "row_a"), (fixed_b, "B", "row_b")):  # rows of one run only
        other = fixed_b if side == "A" else fixed_a
        for k in sorted(rows.keys() - other.keys()):
            suite, r = rows[k]
            out.append({"suite": suite, "table": r["table"], col: r["row"], **_label(r),
                        "refused": f"only in {side}" + (" (B lost it)" if side == "A" else "")})
    return verdicts(pd.DataFrame(out), alpha)


def verdicts(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm–Bonferroni over every compared row with a test, each direction its own family: `p_worse_holm` and
    `p_better_holm`, and the verdict at α. A row with no test (refused, one run a side) is in neither family."""
    df = df.copy()
    for col in ("p_worse", "p_better", "verdict", "refused"):
        if col not in df:
            df[col] = np.nan if col.startswith("p_") else pd.Series(np.nan, index=df.index, dtype=object)
    tested = df["refused"].isna() & df["p_worse"].notna()
    df["p_worse_holm"] = paired.holm(df["p_worse"].where(tested).to_numpy(np.float64))
    df["p_better_holm"] = paired.holm(df["p_better"].where(tested).to_numpy(np.float64))
    for i in df.index[tested]:
        df.at[i, "verdict"] = "B worse" if df.at[i, "p_worse_holm"] < alpha else "B better" \
            if df.at[i, "p_better_holm"] < alpha else "no significant change"
    return df


def gate(df: pd.DataFrame, allow_missing: bool = False) -> list[str]:
    """Why the regression gate fails (empty: it passes): a row of B worse, a row of A lost or refused, nothing
    compared."""
    compared = df[df["refused"].isna()]
    reasons = [f"B worse: {r.get('suite')} {_describe(r)}: {r['diff']:+.2f} points [{r['diff_ci_low']:+.2f}, "
               f"{r['diff_ci_high']:+.2f}], p = {r['p_worse']:.2g} (Holm {r['p_worse_holm']:.2g})"
               for _, r in compared[compared["verdict"] == "B worse"].iterrows()]
    if compared.empty:
        reasons.append("no row was compared: the gate cannot pass on nothing")
    if not allow_missing:
        lost = df[df["refused"].notna() & (df["refused"] != "only in B")]
        reasons += [f"{r['refused']}: {r.get('suite')} {_describe(r)} (--allow-missing to let it pass)"
                    for _, r in lost.iterrows()]
    return reasons


def _describe(r) -> str:
    return ", ".join(f"{f}={r[f]}" for f in LABEL_FIELDS if f in r and r[f] == r[f] and r[f] is not None)


def main(argv: list[str]) -> int:
    p = Parser(prog="python -m harness diff", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the baseline: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("b", help="the run compared with it: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise level of the verdicts, over all compared rows (default 0.05)")
    p.add_argument("--fail-if-worse", action="store_true",
                   help="exit 1 when a row of B is worse at α, or a row of A is missing from B or refused")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --fail-if-worse: rows of A missing from B, or refused, do not fail the gate")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--out", type=Path, default=Path("diff"), help="folder for diff.csv and diff.md (default diff/)")
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha}: a level between 0 and 1 (e.g. 0.05)")
    if args.reps < 100:
        raise ConfigError(f"--reps {args.reps}: the bootstrap needs at least 100 resamples (default 2000)")
    df = diff(args.a, args.b, args.alpha, args.reps, args.seed)
    # how the table was made: this code, these libraries, the command's settings (the rows keep their own seed)
    made = results.provenance({"a": args.a, "b": args.b, "alpha": args.alpha, "reps": args.reps}, "cpu", args.seed)
    df = df.assign(**{k: v for k, v in made.items() if k not in ("device", "seed")}, bootstrap_seed=args.seed)
    cols = [c for c in ("suite", *LABEL_FIELDS, *(f"b_{f}" for f in LABEL_FIELDS), "weights_equal", "unit",
                        "seeds", "images",
                        "acc_a", "acc_b", "diff", "diff_ci_low", "diff_ci_high", "only_a_correct", "only_b_correct",
                        "p_worse", "p_worse_holm", "p_better_holm", "mcnemar_p", "predictions_differ", "verdict",
                        "test", "classes_moved", "refused") if c in df]
    level = f"{1 - args.alpha:.0%}" if (1 - args.alpha) * 100 == round((1 - args.alpha) * 100) \
        else f"{100 * (1 - args.alpha):g}%"
    notes = (f"A: {args.a}; B: {args.b}. `diff`: accuracy of B minus A (points) with a {level} interval (images "
             f"as the unit: paired bootstrap, {args.reps} resamples; seeds as the unit: Student's t). `unit`, "
             "`test`: how each row was compared — images where both sides evaluate the same declared weights "
             "(McNemar's exact test on the discordant images `only_a_correct` / `only_b_correct`), seeds where the "
             "suite trains the weights (the configuration's per-seed accuracies: paired t by seed, or Welch; "
             f"'{INCONCLUSIVE}' with one run a side). `p_worse`: one-sided p of B worse; `p_worse_holm`, "
             "`p_better_holm`: Holm–Bonferroni over every compared row, so the verdicts (at α = "
             f"{args.alpha}) raise a false alarm with probability at most α over the whole comparison; `mcnemar_p`: "
             "the two-sided test. `classes_moved`: class index: change in correctly classified images. Refused "
             "rows compare nothing; under --fail-if-worse they fail the gate unless --allow-missing.")
    write_table(df, args.out, "diff", "Paired comparison of two runs", cols, notes)
    compared = df[df["refused"].isna()]
    worse = compared[compared["verdict"] == "B worse"]
    print(f"{len(compared)} row(s) compared, {len(df) - len(compared)} refused or in one run only; {len(worse)} "
          f"worse in B at family-wise alpha={args.alpha} -> {args.out / 'diff.md'}")
    if not args.fail_if_worse:
        return 0
    reasons = gate(df, args.allow_missing)
    for reason in reasons[:20]:
        print(f"  gate: {reason}", file=sys.stderr)
    if len(reasons) > 20:
        print(f"  gate: ... and {len(reasons) - 20} more (see {args.out / 'diff.md'})", file=sys.stderr)
    return 1 if reasons else 0

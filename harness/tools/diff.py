"""Did a change move accuracy beyond noise? Two runs compared — a regression gate that can sit in a CI.

    python -m harness diff results_before/ results_after/                  every row present in both
    python -m harness diff before/:zero_shot:3 after/:zero_shot:3          one row of each (its number in the
                                                                           suite's table, or its predictions id)
    python -m harness diff before/ after/ --fail-if-worse                  the gate: exit 1 when B is worse

A and B are result folders written by `python -m harness run` (each classification row names its per-image
predictions: harness.infra.predictions). Rows are paired by what they evaluate (the predictions id: suite, model,
library, declared weights, data set, task, templates, architecture, size, seed — never a measured count).

How a row was made decides how it is compared, never the text of a file name: a row whose weights a suite trained
records it (`training`: the run's configuration, its seed aside; `training_seed`), every other row evaluates fixed
weights (a tag, a file, a seeded initialisation).
- **Fixed weights, or trained weights that are the same on both sides** (equal `weights_hash`: the same checkpoint,
  a deterministic retraining): the images are the unit. McNemar's exact test on the images one side gets right and
  the other wrong, and the paired bootstrap interval of B − A.
- **Trained weights that differ**: two trainings of one configuration differ by their training noise, which
  McNemar over images would read as a regression. The seed is the unit: the configuration's per-seed accuracies,
  paired by seed (Student's t on the differences) when both sides ran the same seeds, else Welch's t. With one run
  on a side the row is **not judged** (the configuration's training noise is unknown): it is counted apart and fails
  `--fail-if-worse` unless `--accept-unjudged`. A suite is judged by seed when it runs each configuration with
  several seeds (data_scale runs 3; the linear probe probes data_scale's three seeds; the zero-shot suite trains its
  CLIP once, ~245 s on 2 CPU cores, so its rows are judged by image when the retraining reproduces the weights and
  not judged otherwise).
- **No evidence, no verdict**: equal inputs (no image that one side gets right and the other wrong; the same
  accuracy for every seed) give "no change", neither better nor worse.

Family-wise control: every compared row's one-sided p ("B worse", and "B better" for the other side) is adjusted
by Holm–Bonferroni over all compared rows, so `--fail-if-worse` raises a false alarm on an unchanged evaluation
with probability at most α over the whole comparison (tests/test_gate.py simulates it through this command).
Intervals are at level 1 − α.

The gate fails closed: a row or a seed of A that B lacks, a row refused (other images, labels or classes), a row
not judged, or no row compared at all fail it (exit 1, with the reason); `--allow-missing` lets missing and refused
rows pass and `--accept-unjudged` unjudged ones (nothing compared still fails). A table or predictions file that
cannot be read, or that contradicts itself, is bad input: one line naming the file, exit 2. The table: diff.csv and
diff.md (--out).
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
NOT_JUDGED = "not judged: one training run a side (--accept-unjudged to let it pass)"
NO_CHANGE = "no change"
ACCURACY = ("top1", "test_accuracy")  # the column a row's predictions are checked against
COUNTS = ("images", "test_images")
# the fields of a trained configuration: what it evaluates, the model's id and the seeds aside (each seed's run has
# its own id)
CONFIG_FIELDS = ("library", "dataset", "task", "templates", "architecture", "per_class", "training")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v == ""


def trained(row: dict) -> bool:
    """Whether the row's weights come from a training run a suite made: the run recorded it (`training`)."""
    return not _blank(row.get("training"))


# ------------------------------------------------------------------------------------------ reading a folder
def _table(csv: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{csv}: not a readable table ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "write it again with the suite that made it") from None


def _read_predictions(path: Path, row: dict, where: str) -> pd.DataFrame:
    """A row's predictions file, checked against the row: readable, its columns, its image count, its accuracy."""
    try:
        df = predictions.read(path)
    except Exception as e:  # pyarrow's errors for a truncated or foreign file
        raise ConfigError(f"{path} ({where}): not a readable predictions file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]})") from None
    lost = [c for c in ("index", "label", "top1") if c not in df]
    if lost:
        raise ConfigError(f"{path} ({where}): a predictions file without {', '.join(lost)}")
    count = next((row[c] for c in COUNTS if c in row and not _blank(row[c])), None)
    if count is not None and int(count) != len(df):
        raise ConfigError(f"{path} ({where}): {len(df)} images, its row says {int(count)}: the file is another "
                          "row's, or the table was edited")
    measured = next((row[c] for c in ACCURACY if c in row and not _blank(row[c])), None)
    if measured is not None and len(df):
        acc = 100.0 * predictions.correct(df).mean()
        if abs(acc - float(measured)) >= 50.0 / len(df):  # half an image: a file of other predictions differs by one
            raise ConfigError(f"{path} ({where}): its predictions give {acc:.4g}% correct, its row says "
                              f"{float(measured):.4g}%: the file is another row's, or the table was edited")
    return df


def _rows(folder: Path) -> dict[str, tuple[str, dict]]:
    """{predictions id: (suite, row)} of every table row in `folder` that names its predictions (each checked)."""
    out = {}
    for csv in sorted(folder.glob("*.csv")):
        df = _table(csv)
        if "predictions" not in df:
            continue
        for c in ACCURACY:
            if c in df and not pd.api.types.is_numeric_dtype(df[c]):
                bad = next(v for v in df[c] if not _number(v))
                raise ConfigError(f"{csv}: column {c} holds {bad!r}, not a number")
        for i, row in df[df["predictions"].notna()].iterrows():
            rel = Path(str(row["predictions"]))
            where = f"{csv.name} row {i}"
            if len(rel.parts) != 3 or rel.parts[0] != predictions.FOLDER or rel.suffix != ".parquet":
                raise ConfigError(f"{csv}: row {i} names predictions {str(rel)!r}, not "
                                  f"{predictions.FOLDER}/<suite>/<id>.parquet")
            if rel.stem in out:
                raise ConfigError(f"{csv}: row {i} and {out[rel.stem][1]['table']}.csv row {out[rel.stem][1]['row']} "
                                  f"name the same predictions ({rel}): a row is there twice")
            fields = {"table": csv.stem, "row": i, **row.to_dict()}
            if trained(fields) and not _integer(fields.get("training_seed")):
                raise ConfigError(f"{csv}: row {i} is a trained model's but its training_seed is "
                                  f"{fields.get('training_seed')!r}, not a whole number")
            if not (folder / rel).is_file():
                raise ConfigError(f"{folder}: {where} names {rel}, which is not there: copy the whole results "
                                  "folder, its predictions/ included")
            fields["_frame"] = _read_predictions(folder / rel, fields, where)
            out[rel.stem] = (rel.parts[1], fields)
    return out


def _number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _integer(v) -> bool:
    return _number(v) and float(v) == float(v) and float(v) == int(float(v))


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


# ------------------------------------------------------------------------------------------------ comparing
def _pair(ra: dict, rb: dict) -> str | None:
    """Why two rows cannot be compared image by image (other images, labels or classes), or None."""
    da, db = ra["_frame"], rb["_frame"]
    if len(da) != len(db) or not np.array_equal(da["index"].to_numpy(), db["index"].to_numpy()):
        common = len(np.intersect1d(da["index"], db["index"]))
        return (f"images differ: A has {len(da)}, B has {len(db)}, {common} in both (the same images, in the same "
                "order, are needed)")
    if not np.array_equal(da["label"].to_numpy(), db["label"].to_numpy()):
        n = int(np.sum(da["label"].to_numpy() != db["label"].to_numpy()))
        return f"labels differ on {n} of the {len(db)} images"
    if not _blank(ra.get("classes_hash")) and not _blank(rb.get("classes_hash")) and \
            ra["classes_hash"] != rb["classes_hash"]:
        return "the class list differs (other class names, or another order)"
    return None


def compare(ra: dict, rb: dict, alpha: float = 0.05, reps: int = 2000, seed: int = 0) -> dict:
    """Images as the unit: the paired comparison of two rows' predictions of the same images."""
    refused = _pair(ra, rb)
    if refused:
        return {"images": len(rb["_frame"]), "refused": refused}
    da, db = ra["_frame"], rb["_frame"]
    ca, cb = predictions.correct(da), predictions.correct(db)
    m = paired.mcnemar(ca, cb)
    return {"unit": "images", "test": f"McNemar exact, one-sided, over {len(da)} images; paired bootstrap interval",
            "images": len(da), "acc_a": 100.0 * ca.mean(), "acc_b": 100.0 * cb.mean(),
            **paired.bootstrap_diff(ca, cb, reps=reps, seed=seed, level=1 - alpha), **m,
            "no_evidence": m["only_a_correct"] + m["only_b_correct"] == 0,
            "predictions_differ": int(np.sum(da["top1"].to_numpy() != db["top1"].to_numpy())),
            "classes_moved": paired.moved_classes(da["label"].to_numpy(), ca, cb)}


def compare_seeds(a: dict[int, dict], b: dict[int, dict], alpha: float = 0.05) -> dict:
    """The seed as the unit: one configuration's runs ({seed: row}) on each side."""
    acc = {side: [100.0 * predictions.correct(r["_frame"]).mean() for _, r in sorted(runs.items())]
           for side, runs in (("a", a), ("b", b))}
    r = paired.seed_test(acc["a"], acc["b"], sorted(a), sorted(b), level=1 - alpha)
    seeds = f"{','.join(map(str, sorted(a)))} vs {','.join(map(str, sorted(b)))}"
    if r["test"] == "none":
        return {**r, "unit": "seeds", "seeds": seeds, "verdict": NOT_JUDGED, "p_worse": np.nan,
                "p_better": np.nan, "test": "none: the training noise of the configuration is unknown with one run "
                                            "a side"}
    same = sorted(a) == sorted(b) and acc["a"] == acc["b"]
    return {**r, "unit": "seeds", "seeds": seeds, "no_evidence": same,
            "test": f"{r['test']} (weights trained by the suite: training noise, not images, is the spread)"}


def _weights(ra: dict, rb: dict) -> dict:
    """Whether the two rows carry the same weights (their hashes, where both tables have them), and B's declared
    weights where they differ from A's (another checkpoint file)."""
    out = {"b_weights": rb["weights"]} if "weights" in ra and ra.get("weights") != rb.get("weights") else {}
    if not _blank(ra.get("weights_hash")) and not _blank(rb.get("weights_hash")):
        out["weights_equal"] = ra["weights_hash"] == rb["weights_hash"]
    return out


def _fmt(v):
    return int(v) if isinstance(v, float) and v == v and v == int(v) else v


def _label(row: dict, fields=LABEL_FIELDS) -> dict:
    return {f: _fmt(row[f]) for f in fields if f in row and not _blank(row[f])}


def _configuration(suite: str, row: dict) -> str:
    return results.stable_hash({"suite": suite, **_label(row, CONFIG_FIELDS)})


def _trained_rows(suite: str, ra_runs: dict[int, dict], rb_runs: dict[int, dict], alpha, reps, seed) -> list[dict]:
    """One trained configuration's rows: a seed one side lacks refused (each named); other images, labels or
    classes refused (each seed), and then nothing compared; the same weights on both sides judged by image seed by
    seed; else by seed: paired over the seeds both ran, or Welch's t when they ran none in common."""
    first = next(iter(ra_runs.values()))
    where = {"suite": suite, "table": first["table"], **_label(first, [f for f in LABEL_FIELDS if f != "seed"]),
             "training": first["training"]}
    out = [{**where, "training_seed": s, "refused": f"seed {s} only in A (B lost it)"}
           for s in sorted(ra_runs.keys() - rb_runs.keys())]
    out += [{**where, "training_seed": s, "refused": f"seed {s} only in B"} for s in sorted(rb_runs.keys() -
                                                                                         ra_runs.keys())]
    reference = ra_runs[min(ra_runs)]  # every run of a configuration sees the same test images and labels
    for s, rb in sorted(rb_runs.items()):
        why = _pair(ra_runs.get(s, reference), rb)
        if why:
            out.append({**where, "training_seed": s, "refused": why})
    if any("differ" in r["refused"] for r in out):  # other images, labels or classes: nothing to compare
        return out
    common = sorted(ra_runs.keys() & rb_runs.keys())
    if common and all(_weights(ra_runs[s], rb_runs[s]).get("weights_equal") for s in common):
        return out + [{**where, "training_seed": s, "row_a": ra_runs[s]["row"], "row_b": rb_runs[s]["row"],
                       "weights_equal": True, **compare(ra_runs[s], rb_runs[s], alpha, reps, seed)} for s in common]
    if common:  # the seeds both sides ran, paired (a lost seed is refused above, not read as noise)
        return out + [{**where, **compare_seeds({s: ra_runs[s] for s in common}, {s: rb_runs[s] for s in common},
                                                alpha)}]
    return out + [{**where, **compare_seeds(ra_runs, rb_runs, alpha)}]  # other seeds each side: Welch's t


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
        w = _weights(ra, rb)
        if (trained(ra) or trained(rb)) and not w.get("weights_equal"):
            out.append({**where, **compare_seeds({int(float(ra.get("training_seed", 0))): ra},
                                                 {int(float(rb.get("training_seed", 0))): rb}, alpha)})
        else:
            out.append({**where, **{k: v for k, v in w.items() if k != "b_weights"}, **compare(ra, rb, alpha, reps,
                                                                                              seed)})
        return verdicts(pd.DataFrame(out), alpha)
    # trained rows: by configuration (what the row evaluates, its seed aside), whichever seeds each side ran
    groups: dict[str, dict] = {}
    for side, rows in (("a", rows_a), ("b", rows_b)):
        for suite, r in rows.values():
            if trained(r):
                g = groups.setdefault(_configuration(suite, r), {"suite": suite, "a": {}, "b": {}})
                g[side][int(float(r["training_seed"]))] = r
    for g in groups.values():
        if g["a"] and g["b"]:
            out += _trained_rows(g["suite"], g["a"], g["b"], alpha, reps, seed)
        else:
            r = next(iter((g["a"] or g["b"]).values()))
            side = "A" if g["a"] else "B"
            out.append({"suite": g["suite"], "table": r["table"],
                        **_label(r, [f for f in LABEL_FIELDS if f != "seed"]), "training": r["training"],
                        "refused": f"only in {side}" + (" (B lost it)" if side == "A" else "")})
    # the others: fixed weights, images the unit
    fixed_a = {k: v for k, v in rows_a.items() if not trained(v[1])}
    fixed_b = {k: v for k, v in rows_b.items() if not trained(v[1])}
    for k in [k for k in fixed_a if k in fixed_b]:
        suite, ra = fixed_a[k]
        rb = fixed_b[k][1]
        out.append({"suite": suite, "table": ra["table"], "row_a": ra["row"], "row_b": rb["row"], **_label(ra),
                    **_weights(ra, rb), **compare(ra, rb, alpha, reps, seed)})
    for rows, side, col in ((fixed_a, "A", "row_a"), (fixed_b, "B", "row_b")):  # rows of one run only
        other = fixed_b if side == "A" else fixed_a
        for k in sorted(rows.keys() - other.keys()):
            suite, r = rows[k]
            out.append({"suite": suite, "table": r["table"], col: r["row"], **_label(r),
                        "refused": f"only in {side}" + (" (B lost it)" if side == "A" else "")})
    return verdicts(pd.DataFrame(out), alpha)


def verdicts(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm–Bonferroni over every compared row with a test, each direction its own family: `p_worse_holm` and
    `p_better_holm`, and the verdict at α. A row without evidence either way (equal inputs) is "no change"; a row
    with no test (refused, not judged) is in neither family."""
    df = df.copy()
    for col in ("p_worse", "p_better", "verdict", "refused", "no_evidence"):
        if col not in df:
            df[col] = np.nan if col.startswith("p_") else pd.Series(np.nan, index=df.index, dtype=object)
    tested = df["refused"].isna() & df["p_worse"].notna()
    df["p_worse_holm"] = paired.holm(df["p_worse"].where(tested).to_numpy(np.float64))
    df["p_better_holm"] = paired.holm(df["p_better"].where(tested).to_numpy(np.float64))
    no_evidence = df["no_evidence"].eq(True)  # NaN (a row with no test) is not True
    for i in df.index[tested]:
        if no_evidence[i]:
            df.at[i, "verdict"] = NO_CHANGE
        else:
            df.at[i, "verdict"] = "B worse" if df.at[i, "p_worse_holm"] < alpha else "B better" \
                if df.at[i, "p_better_holm"] < alpha else "no significant change"
    return df


def counts(df: pd.DataFrame) -> dict[str, int]:
    """compared (judged), not judged, refused, worse, better."""
    refused = df["refused"].notna()
    unjudged = ~refused & (df["verdict"] == NOT_JUDGED)
    compared = ~refused & ~unjudged
    return {"compared": int(compared.sum()), "not judged": int(unjudged.sum()), "refused": int(refused.sum()),
            "worse": int((compared & (df["verdict"] == "B worse")).sum()),
            "better": int((compared & (df["verdict"] == "B better")).sum())}


def gate(df: pd.DataFrame, allow_missing: bool = False, accept_unjudged: bool = False) -> list[str]:
    """Why the regression gate fails (empty: it passes): a row of B worse, a row or seed of A lost or refused, a
    row not judged, nothing compared."""
    refused = df["refused"].notna()
    unjudged = ~refused & (df["verdict"] == NOT_JUDGED)
    compared = df[~refused & ~unjudged]
    reasons = [f"B worse: {r.get('suite')} {_describe(r)}: {r['diff']:+.2f} points [{r['diff_ci_low']:+.2f}, "
               f"{r['diff_ci_high']:+.2f}], p = {r['p_worse']:.2g} (Holm {r['p_worse_holm']:.2g})"
               for _, r in compared[compared["verdict"] == "B worse"].iterrows()]
    if compared.empty:
        reasons.append("no row was compared: the gate cannot pass on nothing")
    if not accept_unjudged:
        reasons += [f"{NOT_JUDGED}: {r.get('suite')} {_describe(r)} (seeds {r.get('seeds')})"
                    for _, r in df[unjudged].iterrows()]
    if not allow_missing:
        lost = df[refused & ~df["refused"].astype(str).str.endswith("only in B")]
        reasons += [f"{r['refused']}: {r.get('suite')} {_describe(r)} (--allow-missing to let it pass)"
                    for _, r in lost.iterrows()]
    return reasons


def _describe(r) -> str:
    return ", ".join(f"{f}={_fmt(r[f])}" for f in (*LABEL_FIELDS, "training", "training_seed")
                     if f in r and not _blank(r[f]))


def main(argv: list[str]) -> int:
    p = Parser(prog="python -m harness diff", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the baseline: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("b", help="the run compared with it: a results folder, or FOLDER:SUITE:ROW")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise level of the verdicts, over all compared rows (default 0.05)")
    p.add_argument("--fail-if-worse", action="store_true",
                   help="exit 1 when a row of B is worse at α, a row or seed of A is missing from B or refused, or a "
                        "row cannot be judged")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --fail-if-worse: rows of A missing from B, or refused, do not fail the gate")
    p.add_argument("--accept-unjudged", action="store_true",
                   help="with --fail-if-worse: rows trained once a side (no test possible) do not fail the gate")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--out", type=Path, default=Path("diff"), help="folder for diff.csv and diff.md (default diff/)")
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha}: a level between 0 and 1 (e.g. 0.05)")
    if args.reps < 100:
        raise ConfigError(f"--reps {args.reps}: the bootstrap needs at least 100 resamples (default 2000)")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: a file is there; name a folder for diff.csv and diff.md")
    df = diff(args.a, args.b, args.alpha, args.reps, args.seed)
    # how the table was made: this code, these libraries, the command's settings (the rows keep their own seed)
    made = results.provenance({"a": args.a, "b": args.b, "alpha": args.alpha, "reps": args.reps}, "cpu", args.seed)
    df = df.drop(columns=["no_evidence"])
    df = df.assign(**{k: v for k, v in made.items() if k not in ("device", "seed")}, bootstrap_seed=args.seed)
    cols = [c for c in ("suite", *LABEL_FIELDS, *(f"b_{f}" for f in LABEL_FIELDS), "training", "training_seed",
                        "weights_equal", "unit", "seeds", "images",
                        "acc_a", "acc_b", "diff", "diff_ci_low", "diff_ci_high", "only_a_correct", "only_b_correct",
                        "p_worse", "p_worse_holm", "p_better_holm", "mcnemar_p", "predictions_differ", "verdict",
                        "test", "classes_moved", "refused") if c in df]
    level = f"{1 - args.alpha:.0%}" if (1 - args.alpha) * 100 == round((1 - args.alpha) * 100) \
        else f"{100 * (1 - args.alpha):g}%"
    notes = (f"A: {args.a}; B: {args.b}. `diff`: accuracy of B minus A (points) with a {level} interval (images "
             f"as the unit: paired bootstrap, {args.reps} resamples; seeds as the unit: Student's t, paired or "
             "Welch's). `unit`, `test`: how each row was compared — images where both sides evaluate the same "
             "fixed weights or the same trained weights (`weights_equal`; McNemar's exact test on the discordant "
             "images `only_a_correct` / `only_b_correct`), seeds where the suite trained weights that differ (the "
             "configuration's per-seed accuracies: paired t by seed, or Welch's t; "
             f"'{NOT_JUDGED}' with one run a side). `{NO_CHANGE}`: equal inputs, no evidence either way. "
             "`p_worse`: one-sided p of B worse; `p_worse_holm`, `p_better_holm`: Holm–Bonferroni over every "
             f"compared row, so the verdicts (at α = {args.alpha}) raise a false alarm with probability at most α "
             "over the whole comparison; `mcnemar_p`: the two-sided test. `classes_moved`: class index: change in "
             "correctly classified images. Refused rows compare nothing; under --fail-if-worse they fail the gate "
             "unless --allow-missing, and rows not judged unless --accept-unjudged.")
    try:
        write_table(df, args.out, "diff", "Paired comparison of two runs", cols, notes)
    except OSError as e:
        raise ConfigError(f"--out {args.out}: cannot write there ({e.strerror or e})") from None
    c = counts(df)
    print(f"{c['compared']} row(s) compared ({c['worse']} worse, {c['better']} better in B at family-wise "
          f"alpha={args.alpha}), {c['not judged']} not judged, {c['refused']} refused or in one run only -> "
          f"{args.out / 'diff.md'}")
    if not args.fail_if_worse:
        return 0
    reasons = gate(df, args.allow_missing, args.accept_unjudged)
    for reason in reasons[:20]:
        print(f"  gate: {reason}", file=sys.stderr)
    if len(reasons) > 20:
        print(f"  gate: ... and {len(reasons) - 20} more (see {args.out / 'diff.md'})", file=sys.stderr)
    if not reasons:
        print(f"gate passed: {c['compared']} row(s) compared, none worse in B at family-wise alpha={args.alpha}")
    return 1 if reasons else 0

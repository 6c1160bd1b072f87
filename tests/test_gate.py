"""`python -m harness diff --fail-if-worse` as a regression gate: its statistics against scipy's, its false-alarm rate
over many rows simulated under the null, its power on a planted drop, the seed as the unit of trained rows, and a
gate that fails closed."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import tasks
from harness.infra import predictions
from harness.methods import paired
from harness.tools import cli
from harness.tools import diff as diff_tool

REPO = Path(__file__).parent.parent


# ------------------------------------------------------------------------------------------- statistics
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: x3, x2, x1 -> 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    assert paired.holm([0.04, 0.01, np.nan, 0.03]) == pytest.approx([0.06, 0.03, np.nan, 0.06], nan_ok=True)
    assert paired.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # 0.5 x 2 = 1; then monotone: max(1, 0.9)
    assert np.isnan(paired.holm([np.nan])).all()


def test_seed_tests_are_scipys():
    a, b = np.array([80.1, 79.5, 81.0]), np.array([79.0, 79.9, 80.2])
    r = paired.seed_test(a, b, [0, 1, 2], [0, 1, 2])  # the same seeds: paired by seed
    assert r["p_worse"] == pytest.approx(stats.ttest_rel(b, a, alternative="less").pvalue, rel=1e-12)
    assert r["test"] == "paired t over 3 seeds"
    low, high = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((low, high), rel=1e-12)
    r = paired.seed_test(a, b, [0, 1, 2], [3, 4, 5])  # other seeds: Welch
    assert r["p_worse"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False, alternative="less").pvalue,
                                         rel=1e-12)
    low, high = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((low, high), rel=1e-12)
    one = paired.seed_test([80.0], [70.0], [0], [1])  # one run a side: no test, whatever the difference
    assert one["test"] == "none" and np.isnan(one["p_worse"]) and one["diff"] == -10.0
    m = paired.t_interval([1.0, 2.0, 3.0])
    assert m == pytest.approx((2.0, *stats.t.interval(0.95, 2, loc=2.0, scale=1 / np.sqrt(3))))


# ------------------------------------------------------------------------------ the null, and the power
def _table(only_a, only_b, diff):
    two, worse, better = paired.mcnemar_counts(only_a, only_b)
    return pd.DataFrame({"suite": "s", "model": [f"m{i}" for i in range(len(only_a))], "diff": diff,
                         "diff_ci_low": diff, "diff_ci_high": diff, "p_worse": worse, "p_better": better,
                         "refused": None})


def _unchanged(rng, rows, images, disagree=0.02):
    """B = A with symmetric random disagreements: each image is discordant with probability `disagree`, and a
    discordant image as likely to be one side's as the other's (McNemar's null, exactly)."""
    discordant = rng.binomial(images, disagree)
    only_b = rng.binomial(discordant, 0.5)
    return discordant - only_b, only_b


def test_the_gate_keeps_its_false_alarm_rate_over_many_rows():
    """120 rows of an unchanged evaluation (1,000-10,000 images each), 600 replicates: the gate (Holm over every
    row) fires in at most α of them. Monte Carlo error: at α = 0.05 over 600 replicates the count of alarms, if the
    rate were exactly α, is Binomial(600, 0.05): mean 30, sd 5.3; more than 30 + 3.1 sd = 46 has chance < 0.1%.
    Without the family-wise control (each row at α) the same evaluations raise an alarm in most replicates."""
    rng = np.random.default_rng(0)
    alpha, reps, rows = 0.05, 600, 120
    images = rng.integers(1_000, 10_001, rows)
    fired = bare = 0
    for _ in range(reps):
        only_a, only_b = _unchanged(rng, rows, images)
        df = diff_tool.verdicts(_table(only_a, only_b, (only_b - only_a) / images * 100), alpha)
        fired += bool(diff_tool.gate(df))
        bare += bool((df["p_worse"] < alpha).any())
    assert fired <= 46, fired
    assert bare > 0.9 * reps, bare  # 1 - (1 - ~0.045)^120: the uncontrolled gate almost always fires


def test_the_gate_finds_a_two_point_drop_in_one_row_of_60():
    """One row of 60 (10,000 images each) loses 2 points: 200 of its images that A got right, B gets wrong, beside
    the same symmetric disagreements as the other rows. The gate fires on that row in every replicate; another
    row is called worse in at most α of them (Binomial(100, 0.05): mean 5, sd 2.2; 12 is 3.2 sd above)."""
    rng = np.random.default_rng(1)
    images = np.full(60, 10_000)
    found = extra = 0
    for _ in range(100):
        only_a, only_b = _unchanged(rng, 60, images)
        only_a[17] += 200
        df = diff_tool.verdicts(_table(only_a, only_b, (only_b - only_a) / images * 100), 0.05)
        worse = set(df.index[df["verdict"] == "B worse"])
        found += 17 in worse and any("model=m17" in r for r in diff_tool.gate(df))
        extra += bool(worse - {17})
    assert found == 100 and extra <= 12, (found, extra)


# ---------------------------------------------------------------------------------- folders of results
def _write(folder: Path, suite: str, rows: list[tuple[dict, np.ndarray, np.ndarray]]):
    """A results folder: rows (fields, labels, top-1 predictions) with their predictions files, as the runner
    writes them."""
    out = []
    for fields, labels, top1 in rows:
        n = len(labels)
        ranked = np.stack([top1, (top1 + 1) % 10], axis=1)
        out.append(predictions.attach(dict(fields), np.arange(n), labels, ranked, np.ones(n)))
    written = predictions.write(out, folder, suite)
    pd.DataFrame(written).to_csv(folder / f"{suite}.csv", index=False)
    return written


def _trained_run(folder: Path, shift: int, drop: float = 0.0, seeds=(0, 1, 2), n=2000,
                 archs=("vit_reference", "resnet_small"), hashes: str | None = None):
    """data_scale-like rows, as its evaluator records them (training, training_seed, weights_hash): two
    configurations × seeds; each training run's predictions its own (its errors fall on other images: training
    noise), at ~75% accuracy less `drop`. `hashes`: the runs' weights hash prefix (by default each run its own)."""
    labels = np.arange(n) % 10
    rows = []
    for arch in archs:
        for seed in seeds:
            rng = np.random.default_rng(1000 * shift + 10 * seed + len(arch))
            right = rng.random(n) < 0.75 + 0.01 * rng.normal() - drop
            rows.append(({"architecture": arch, "per_class": 200, "seed": seed, "test_accuracy": right.mean() * 100,
                          "test_images": n, "training": f"data_scale:{arch}:200", "training_seed": seed,
                          "weights_hash": f"{hashes or shift}-{arch}-{seed}"},
                         labels, np.where(right, labels, (labels + 3) % 10)))
    return _write(folder, "data_scale", rows)


def test_retrained_models_are_compared_by_seed_not_by_image(tmp_path, capsys):
    """Two trainings of one configuration differ by training noise: by image they differ in hundreds of
    predictions (McNemar would call it a regression), by seed they do not."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    written = _trained_run(a, shift=0)
    _trained_run(b, shift=2)  # one fixed draw of the null: another training of each configuration
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 0
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert len(d) == 2 and (d.unit == "seeds").all() and d.test.str.startswith("paired t over 3 seeds").all()
    assert (d.seeds == "0,1,2 vs 0,1,2").all() and (d.verdict == "no significant change").all()
    # the same two runs image by image (named rows, seed 0 against seed 1 of A): not judged, not "B worse"; the
    # gate fails on it unless told to accept it
    row = {r["seed"]: i for i, r in enumerate(written) if r["architecture"] == "vit_reference"}
    ab = predictions.correct(pd.read_parquet(a / written[row[0]]["predictions"]))
    bb = predictions.correct(pd.read_parquet(a / written[row[1]]["predictions"]))
    assert paired.mcnemar(ab, bb)["only_a_correct"] + paired.mcnemar(ab, bb)["only_b_correct"] > 500
    named = [f"{a}:data_scale:{row[0]}", f"{a}:data_scale:{row[1]}", "--fail-if-worse"]
    capsys.readouterr()
    assert cli.main(["diff", *named, "--out", str(tmp_path / "n")]) == 1
    assert "--accept-unjudged" in capsys.readouterr().err
    # accepted, it is still not a comparison: the gate does not pass on nothing
    assert cli.main(["diff", *named, "--accept-unjudged", "--out", str(tmp_path / "n")]) == 1
    assert "no row was compared" in capsys.readouterr().err
    n = pd.read_csv(tmp_path / "n" / "diff.csv").iloc[0]
    assert n.verdict == diff_tool.NOT_JUDGED and n.seed == 0 and n.b_seed == 1  # each row's own label
    # a real regression of the configuration (every seed 10 points down) is found by seed
    c = tmp_path / "c"
    c.mkdir()
    _trained_run(c, shift=6, drop=0.10)
    assert cli.main(["diff", str(a), str(c), "--fail-if-worse", "--out", str(tmp_path / "e")]) == 1
    assert (pd.read_csv(tmp_path / "e" / "diff.csv").verdict == "B worse").all()
    # other seeds on B's side: Welch's t over the two samples; A's seeds B lacks are refused, each named
    w = tmp_path / "w"
    w.mkdir()
    _trained_run(w, shift=3, seeds=(3, 4, 5, 6))
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(w), "--fail-if-worse", "--allow-missing", "--out", str(tmp_path / "f")]) == 0
    f = pd.read_csv(tmp_path / "f" / "diff.csv")
    assert len(f[f.refused.isna()]) == 2 and (f.refused.str.contains("only in A").sum() == 6)
    welch = f[f.refused.isna()]
    assert welch.test.str.startswith("Welch t (3 vs 4 seeds)").all() and (welch.seeds == "0,1,2 vs 3,4,5,6").all()
    # a configuration B lost: the gate fails
    lost = tmp_path / "lost"
    lost.mkdir()
    _trained_run(lost, shift=4, archs=("vit_reference",))
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(lost), "--fail-if-worse", "--out", str(tmp_path / "g")]) == 1
    assert "only in A (B lost it): data_scale architecture=resnet_small" in capsys.readouterr().err


def test_a_lost_seed_is_refused_and_named_for_every_seed(tmp_path, capsys):
    """B ran seeds 0 and 1 of a configuration A ran with 0, 1, 2: seed 2 refused by name (not Welch over 3 vs 2);
    and another image set on seed 1 (not the lowest seed) is refused for that seed."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _trained_run(a, shift=0)
    _trained_run(b, shift=2, seeds=(0, 1))
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "seed 2 only in A (B lost it): data_scale architecture=vit_reference" in err
    assert "seed 2 only in A (B lost it): data_scale architecture=resnet_small" in err
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert (d.refused.notna().sum(), d.refused.isna().sum()) == (2, 2)  # the rest: paired over seeds 0 and 1
    assert d[d.refused.isna()].test.str.startswith("paired t over 2 seeds").all()
    # seed 1 of B on other test images (one image short)
    short = tmp_path / "short"
    short.mkdir()
    written = _trained_run(short, shift=2)
    i = next(i for i, r in enumerate(written) if r["seed"] == 1 and r["architecture"] == "resnet_small")
    p = pd.read_parquet(short / written[i]["predictions"]).iloc[:-1]
    p.to_parquet(short / written[i]["predictions"], index=False)
    table = pd.read_csv(short / "data_scale.csv")
    table.loc[i, "test_images"] -= 1
    table.loc[i, "test_accuracy"] = 100.0 * (p.top1 == p.label).mean()
    table.to_csv(short / "data_scale.csv", index=False)
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(short), "--fail-if-worse", "--out", str(tmp_path / "e")]) == 1
    assert "images differ: A has 2000, B has 1999" in capsys.readouterr().err
    e = pd.read_csv(tmp_path / "e" / "diff.csv")
    assert e[e.refused.notna()].training_seed.tolist() == [1]


def test_a_changed_class_list_is_refused(tmp_path, capsys):
    """The same images and labels, but B's labels index another class list (renamed or reordered classes)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder, names in ((a, ["cat", "dog"]), (b, ["dog", "cat"])):
        labels = np.arange(100) % 2
        _write(folder, "linear_probe", [({"model": "m", "library": "timm", "weights": "random", "dataset": "x",
                                          "classes_hash": tasks.classes_hash(names)}, labels, labels)])
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    assert "the class list differs" in capsys.readouterr().err


def test_one_training_a_side_is_not_judged_and_fails_the_gate(tmp_path, capsys):
    """The zero-shot suite's CLIP, trained once a side: its weights differ (a retraining on another CPU), so the
    images cannot judge it and one run a side cannot either. Every prediction made wrong (79% -> 0%) must not pass
    unjudged: the gate fails naming the row, and the summary counts it apart from the compared rows."""
    labels = np.arange(400) % 10
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    own = {"model": "clip_fmnist", "library": "reference", "weights": "trained (clip_fmnist)",
           "task": "classification", "dataset": "fashion_mnist", "training": "zero_shot:clip_fmnist",
           "training_seed": 0}
    good = np.where(np.arange(400) < 316, labels, (labels + 1) % 10)  # 79%
    fixed = {"model": "vit", "library": "timm", "weights": "random", "dataset": "fashion_mnist"}
    _write(a, "zero_shot", [({**own, "weights_hash": "h1", "top1": 79.0}, labels, good),
                            (fixed, labels, good)])
    _write(b, "zero_shot", [({**own, "weights_hash": "h2", "top1": 0.0}, labels, (labels + 1) % 10),
                            (fixed, labels, good)])
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    out = capsys.readouterr()
    assert "not judged" in out.err and "model=clip_fmnist" in out.err and "--accept-unjudged" in out.err
    assert "1 row(s) compared" in out.out and "1 not judged" in out.out
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--accept-unjudged", "--out",
                     str(tmp_path / "d")]) == 0
    # the same trained weights on both sides (the same checkpoint, or a retraining that reproduced it) are a fixed
    # model: judged image by image, and the drop is found
    c = tmp_path / "c"
    c.mkdir()
    _write(c, "zero_shot", [({**own, "weights_hash": "h1", "top1": 0.0}, labels, (labels + 1) % 10),
                            (fixed, labels, good)])
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(c), "--fail-if-worse", "--out", str(tmp_path / "e")]) == 1
    e = pd.read_csv(tmp_path / "e" / "diff.csv")
    row = e[e.model == "clip_fmnist"].iloc[0]
    assert row.verdict == "B worse" and row.unit == "images" and bool(row.weights_equal)
    # one side without a weights hash: not taken for the same weights (judged by seed: not judged here)
    d = tmp_path / "nohash"
    d.mkdir()
    _write(d, "zero_shot", [({**{k: v for k, v in own.items()}, "top1": 0.0}, labels, (labels + 1) % 10),
                            (fixed, labels, good)])
    assert cli.main(["diff", str(a), str(d), "--fail-if-worse", "--out", str(tmp_path / "f")]) == 1
    f = pd.read_csv(tmp_path / "f" / "diff.csv")
    assert f[f.model == "clip_fmnist"].verdict.tolist() == [diff_tool.NOT_JUDGED]


def test_trained_or_fixed_is_decided_by_the_record_not_the_file_name(tmp_path, capsys):
    """A fixed checkpoint in a folder named trained_models/: a 40-point drop is found (image by image)."""
    labels = np.arange(500) % 10
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    row = {"model": "vit", "library": "python", "weights": "trained_models/best.pt", "dataset": "x"}
    _write(a, "linear_probe", [(row, labels, np.where(np.arange(500) < 400, labels, (labels + 1) % 10))])
    _write(b, "linear_probe", [(row, labels, np.where(np.arange(500) < 200, labels, (labels + 1) % 10))])
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    d = pd.read_csv(tmp_path / "d" / "diff.csv").iloc[0]
    assert d.verdict == "B worse" and d.unit == "images" and d["diff"] == pytest.approx(-40.0)


def test_equal_inputs_are_no_change(tmp_path, capsys):
    """A folder against a copy of itself: every row "no change", neither better nor worse — fixed rows (no image
    one side gets right and the other wrong) and trained ones (the same seeds, the same accuracies: a spread of 0
    and a difference of 0 is no evidence either way)."""
    a = tmp_path / "a"
    a.mkdir()
    _trained_run(a, shift=0)
    _fixed_run(a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    # B retrained each configuration with the same outcome but other weights (seed by seed the same accuracy)
    _trained_run(b, shift=0, hashes="other")
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "gate passed" in out and "0 worse, 0 better" in out
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert len(d) == 6 and (d.verdict == diff_tool.NO_CHANGE).all(), d.verdict.tolist()
    assert (d[d.unit == "seeds"].seeds == "0,1,2 vs 0,1,2").all() and (d.unit == "seeds").sum() == 2


def test_the_published_results_against_themselves_are_no_change(tmp_path, capsys):
    """The issue's case: `diff results results` — every row "no change", exit 0."""
    assert cli.main(["diff", str(REPO / "results"), str(REPO / "results"), "--fail-if-worse", "--out",
                     str(tmp_path / "d")]) == 0
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert len(d) >= 27 and (d.verdict == diff_tool.NO_CHANGE).all(), d[d.verdict != diff_tool.NO_CHANGE]
    trained = d[d.training.notna()]
    assert len(trained) and (trained.unit == "images").all() and trained.weights_equal.all()


def test_a_planted_two_point_drop_in_a_published_row_is_found(tmp_path, capsys):
    """results/ copied, one linear_probe row's predictions made wrong on 2% more of its images (A right, B wrong):
    the gate fails on that row, the others are "no change"."""
    b = tmp_path / "b"
    shutil.copytree(REPO / "results", b)
    table = pd.read_csv(b / "linear_probe.csv")
    i = table[table.predictions.notna()].index[0]
    path = b / table.loc[i, "predictions"]
    p = pd.read_parquet(path)
    right = np.flatnonzero(p.top1.to_numpy() == p.label.to_numpy())
    k = int(round(0.02 * len(p)))
    p.loc[right[:k], "top1"] = (p.label.to_numpy()[right[:k]] + 1) % int(p.label.max() + 1)
    p.to_parquet(path, index=False)
    table.loc[i, "top1"] = 100.0 * (p.top1 == p.label).mean()
    table.to_csv(b / "linear_probe.csv", index=False)
    capsys.readouterr()
    assert cli.main(["diff", str(REPO / "results"), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    assert f"B worse: linear_probe model={table.loc[i, 'model']}" in capsys.readouterr().err
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert (d.verdict == "B worse").sum() == 1 and (d.verdict == diff_tool.NO_CHANGE).sum() == len(d) - 1


def _fixed_run(folder: Path, rows=4, n=500, lose=None, short=None):
    labels = np.arange(n) % 10
    out = []
    for i in range(rows):
        top1 = labels.copy()
        top1[: 50 + i] = (labels[: 50 + i] + 1) % 10
        m = n if short != i else n - 1
        out.append(({"model": f"m{i}", "library": "timm", "weights": "random", "dataset": "x"}, labels[:m],
                    top1[:m]))
    if lose is not None:
        out.pop(lose)
    return _write(folder, "linear_probe", out)


def test_the_gate_fails_closed(tmp_path, capsys):
    a, same, lost, short = (tmp_path / n for n in ("a", "same", "lost", "short"))
    for f in (a, same, lost, short):
        f.mkdir()
    _fixed_run(a), _fixed_run(same), _fixed_run(lost, lose=2), _fixed_run(short, short=1)
    assert cli.main(["diff", str(a), str(same), "--fail-if-worse", "--out", str(tmp_path / "d0")]) == 0
    d = pd.read_csv(tmp_path / "d0" / "diff.csv")
    assert len(d) == 4 and (d.unit == "images").all() and (d.verdict == diff_tool.NO_CHANGE).all()
    # a row of A that B lost: the gate fails, naming it; --allow-missing lets it pass
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(lost), "--fail-if-worse", "--out", str(tmp_path / "d1")]) == 1
    assert "only in A (B lost it): linear_probe model=m2" in capsys.readouterr().err
    assert cli.main(["diff", str(a), str(lost), "--fail-if-worse", "--allow-missing", "--out",
                     str(tmp_path / "d2")]) == 0
    # a row refused (one image short): fails
    assert cli.main(["diff", str(a), str(short), "--fail-if-worse", "--out", str(tmp_path / "d3")]) == 1
    assert "images differ: A has 500, B has 499" in capsys.readouterr().err
    # nothing compared at all: fails even with --allow-missing
    only = tmp_path / "only"
    only.mkdir()
    _write(only, "linear_probe", [({"model": "other", "library": "timm", "weights": "random", "dataset": "x"},
                                   np.zeros(5, int), np.zeros(5, int))])
    assert cli.main(["diff", str(a), str(only), "--fail-if-worse", "--allow-missing", "--out",
                     str(tmp_path / "d4")]) == 1
    assert "no row was compared" in capsys.readouterr().err
    assert cli.main(["diff", str(a), str(only), "--out", str(tmp_path / "d5")]) == 0  # no gate asked for


def test_the_interval_follows_alpha_and_rows_keep_their_seed(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _fixed_run(a)
    labels = np.arange(500) % 10
    _write(b, "linear_probe", [({"model": f"m{i}", "library": "timm", "weights": "random", "dataset": "x"},
                                labels, np.where(np.arange(500) < 70 + i, (labels + 1) % 10, labels))
                               for i in range(4)])
    widths = {}
    for alpha in (0.05, 0.01):
        out = tmp_path / f"d{alpha}"
        cli.main(["diff", str(a), str(b), "--alpha", str(alpha), "--out", str(out)])
        d = pd.read_csv(out / "diff.csv")
        widths[alpha] = (d.diff_ci_high - d.diff_ci_low).mean()
        assert f"{1 - alpha:.0%} interval" in (out / "diff.md").read_text()
    assert widths[0.01] > widths[0.05]
    t = tmp_path / "t"
    t.mkdir()
    _trained_run(t, shift=0)
    out = tmp_path / "seeds"
    cli.main(["diff", f"{t}:data_scale:4", f"{t}:data_scale:5", "--out", str(out)])
    d = pd.read_csv(out / "diff.csv").iloc[0]
    assert (d.seed, d.b_seed) == (1, 2) and "bootstrap_seed" in d  # the rows' own seeds, not the command's
    capsys.readouterr()


# ------------------------------------------------------------------------- the null, through the whole command
def _mcnemar_run(folder: Path, discordant: list[tuple[int, int]], n: int):
    """One row per (only_a, only_b): B differs from A on those images only (A's top-1 the label everywhere)."""
    labels = np.arange(n) % 10
    rows_a, rows_b = [], []
    for i, (only_a, only_b) in enumerate(discordant):
        a, b = labels.copy(), labels.copy()
        a[:only_b] = (labels[:only_b] + 1) % 10  # images only B gets right
        b[only_b: only_b + only_a] = (labels[only_b: only_b + only_a] + 1) % 10  # images only A gets right
        fields = {"model": f"m{i}", "library": "timm", "weights": "random", "dataset": "x"}
        rows_a.append(({**fields, "top1": 100.0 * (a == labels).mean()}, labels, a))
        rows_b.append(({**fields, "top1": 100.0 * (b == labels).mean()}, labels, b))
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    _write(folder / "a", "linear_probe", rows_a)
    _write(folder / "b", "linear_probe", rows_b)
    return folder / "a", folder / "b"


def test_the_false_alarm_rate_through_the_whole_command(tmp_path):
    """An unchanged evaluation of 5 rows (2,000 images; each image discordant with probability 2.5%, a discordant
    image as likely one side's as the other's), written by the harness's own writers and read back by `diff`: the
    gate fires at its exact rate, neither more nor never. Exact rate: under this null the gate fires when some
    row's one-sided McNemar p is below α/5 (Holm's first step), so P(fire) = 1 − (1 − s)^5 with
    s = Σ_D P(D) P(p_worse(D, X) < α/5), D ~ Binomial(2000, 0.025), X | D ~ Binomial(D, 1/2) — below α because the
    exact test is discrete. α = 0.2 puts the expected count of alarms (41.6 of 300) far enough from 0 for a lower
    bound: the count is Binomial(300, P(fire)), and the bounds are 3.3 sd either side (21.9 and 61.4; each side's
    chance of failing a correct gate < 0.1%). A gate that never fires fails the lower bound; one without the
    family-wise control (each row at α: P(fire) ≈ 0.6) the upper."""
    alpha, rows, n, disagree, reps = 0.2, 5, 2000, 0.025, 300
    size = 0.0
    for dd in range(0, 201):  # D > 200 has probability < 1e-60
        x = np.arange(dd + 1)
        _, worse, _ = paired.mcnemar_counts(dd - x, x)
        size += stats.binom.pmf(dd, n, disagree) * stats.binom.pmf(x, dd, 0.5)[worse < alpha / rows].sum()
    rate = 1 - (1 - size) ** rows
    assert rate < alpha
    rng = np.random.default_rng(7)
    fired = 0
    for r in range(reps):
        discordant = rng.binomial(n, disagree, rows)
        only_b = rng.binomial(discordant, 0.5)
        a, b = _mcnemar_run(tmp_path / str(r), list(zip(discordant - only_b, only_b)), n)
        fired += bool(diff_tool.gate(diff_tool.diff(str(a), str(b), alpha, reps=100)))
    sd = np.sqrt(reps * rate * (1 - rate))
    assert reps * rate - 3.3 * sd <= fired <= reps * rate + 3.3 * sd, (fired, rate)


def test_holm_rejects_what_bonferroni_does_not(tmp_path, capsys):
    """Three rows, B worse on 7, 6 and 5 images and better on none: one-sided p = 1/128, 1/64, 1/32. Bonferroni
    (each against 0.05/3) rejects the first two; Holm (0.05/3, 0.05/2, 0.05) all three."""
    a, b = _mcnemar_run(tmp_path, [(7, 0), (6, 0), (5, 0)], 500)
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 1
    d = pd.read_csv(tmp_path / "d" / "diff.csv")
    assert d.p_worse.tolist() == pytest.approx([1 / 128, 1 / 64, 1 / 32])
    assert (d.p_worse * 3 < 0.05).tolist() == [True, True, False]  # Bonferroni
    assert (d.verdict == "B worse").all()  # Holm
    assert capsys.readouterr().out.startswith("3 row(s) compared (3 worse, 0 better")


# ------------------------------------------------------------------------------------------ damaged input
def _damaged(tmp_path, how: str) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _fixed_run(a)
    _fixed_run(b)
    t = pd.read_csv(b / "linear_probe.csv")
    if how == "empty csv":
        (b / "linear_probe.csv").write_text("")
    elif how == "truncated parquet":
        f = b / t.predictions[1]
        f.write_bytes(f.read_bytes()[:40])
    elif how == "one path part":
        t.loc[1, "predictions"] = "x.parquet"
        t.to_csv(b / "linear_probe.csv", index=False)
    elif how == "another row's predictions":
        t.loc[1, "predictions"], t.loc[2, "predictions"] = t.predictions[2], t.predictions[1]
        t["top1"] = [100 - (50 + i) / 5 for i in range(4)]  # each row's accuracy (50 + i of 500 images wrong)
        t.to_csv(b / "linear_probe.csv", index=False)
    elif how == "duplicate row":
        pd.concat([t, t.iloc[[1]]]).to_csv(b / "linear_probe.csv", index=False)
    elif how == "non-numeric accuracy":
        t["top1"] = ["ninety", 89.8, 89.6, 89.4]
        t.to_csv(b / "linear_probe.csv", index=False)
    elif how == "blank training seed":
        t["training"], t["training_seed"] = "data_scale:x:1", [0, np.nan, 2, 3]
        t.to_csv(b / "linear_probe.csv", index=False)
    elif how == "lost predictions file":
        (b / t.predictions[3]).unlink()
    return a, b


@pytest.mark.parametrize("how, says", [
    ("empty csv", "not a readable table"), ("truncated parquet", "not a readable predictions file"),
    ("one path part", "not predictions/<suite>/<id>.parquet"), ("another row's predictions", "another row's"),
    ("duplicate row", "a row is there twice"), ("non-numeric accuracy", "column top1 holds 'ninety'"),
    ("blank training seed", "not a whole number"), ("lost predictions file", "which is not there")])
def test_damaged_input_exits_2_with_one_line(tmp_path, capsys, how, says):
    a, b = _damaged(tmp_path, how)
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if-worse", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0] and str(b) in err[0], err


def test_out_naming_a_file_exits_2(tmp_path, capsys):
    a, b = _damaged(tmp_path, "nothing")
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--out", str(tmp_path / "file")]) == 2
    assert "a file is there" in capsys.readouterr().err

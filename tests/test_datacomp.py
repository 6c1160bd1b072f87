"""DataComp's 38 tasks: the declarations against tasklist.yml's and open_clip's published numbers, each metric
against scikit-learn or a hand-worked case, and the loaders on small copies in each published layout (DataComp's
webdataset download, nlphuji's parquet exports), offline."""

import io
import tarfile

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, jaccard_score

import harness.data as harness_data
from harness.data import datacomp
from harness.evals import zero_shot as zs_eval
from harness.infra.suite import ConfigError, Context
from harness.methods import task_metrics
from harness.models.open_clip import create as load_open_clip


# ------------------------------------------------------------------------------------------- declarations
def test_the_38_tasks_and_the_published_average():
    assert len(datacomp.TASKS) == 38 and len(datacomp.TASK) == 38
    names = {t.name for t in datacomp.TASKS}
    assert all(set(g) <= names for g in datacomp.GROUPS.values())
    assert {t.key for t in datacomp.TASKS if t.metric == "mean_per_class_recall"} == {
        "vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"}
    # download_evalsets.py's repository names
    assert datacomp.task("vtab/caltech101").hub_id == "djghosh/wds_vtab-caltech101_test"
    assert datacomp.task("fairness/geode").hub_id == "djghosh/wds_geode_test"
    assert datacomp.task("retrieval/flickr30k").hub_id == "nlphuji/flickr30k"
    # open_clip's "Average perf. on 38 datasets" is the unweighted mean of these 38 tasks' numbers: each published
    # per-task value is rounded to 4 decimals, so their mean is within 5e-5 of the published average
    for model, published in datacomp.PUBLISHED.items():
        scores = {k: v for k, v in published.items() if k != "Average"}
        assert set(scores) == names
        agg = task_metrics.aggregate(scores, datacomp.GROUPS, 38)
        assert agg["Average"] == pytest.approx(published["Average"], abs=5e-5), model
    with pytest.raises(ConfigError, match="unknown DataComp task 'cifar11' \\(did you mean cifar10"):
        datacomp.task("cifar11")


def test_aggregate_by_hand():
    groups = {"G": ("a", "b")}
    agg = task_metrics.aggregate({"ImageNet 1k": 0.5, "a": 0.2, "b": 0.4, "c": 1.0}, groups, 4)
    assert agg == pytest.approx({"ImageNet": 0.5, "G": 0.3, "Average": (0.5 + 0.2 + 0.4 + 1.0) / 4})
    partial = task_metrics.aggregate({"a": 0.2}, groups, 4)  # a missing task: no group mean, no average
    assert np.isnan(partial["G"]) and np.isnan(partial["Average"]) and np.isnan(partial["ImageNet"])


# ----------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(5))
def test_metrics_against_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 200)
    pred = np.where(rng.random(200) < 0.4, y, rng.integers(0, 9, 200))  # some predictions of absent classes
    assert task_metrics.mean_per_class_recall(pred, y) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    # WILDS' F1(average="macro") passes labels=torch.unique(y_true) to scikit-learn
    assert task_metrics.macro_f1(pred, y) == pytest.approx(
        f1_score(y, pred, average="macro", labels=np.unique(y)), abs=1e-12)
    assert task_metrics.accuracy(pred, y) == pytest.approx(np.mean(pred == y))
    sim = rng.normal(size=12)
    truth = np.zeros(12, bool)
    truth[rng.choice(12, 3, replace=False)] = True
    chosen = np.isin(np.arange(12), np.argsort(sim)[-3:])
    assert task_metrics.winogavil_instance(sim, truth) == pytest.approx(jaccard_score(truth, chosen))


def test_worst_group_metrics_by_hand():
    y = np.array([0, 1, 2, 0, 1, 2])
    top5 = np.array([[0, 1], [1, 0], [0, 2], [1, 0], [0, 1], [2, 1]])  # top-1: 0, 1, 0, 1, 0, 2
    meta = np.array([[0, 9], [0, 9], [1, 9], [1, 9], [3, 9], [3, 9]])  # groups 0, 1, 3 (2 is empty: not counted)
    # top-1 accuracy per group: {0: 2/2, 1: 0/2, 3: 1/2} -> worst 0; top-2: {0: 1, 1: 1, 3: 1} -> 1
    assert task_metrics.main_metric("acc_wg", top5, y, meta, 0) == 0.0
    assert task_metrics.main_metric("acc_worst_region", top5, y, meta, 0) == 0.0
    assert task_metrics.main_metric("acc_top5_wg", top5, y, meta, 0) == 1.0
    worst, per = task_metrics.worst_group(top5[:, 0], y, meta[:, 0])
    assert per == {0: (1.0, 2), 1: (0.0, 2), 3: (0.5, 2)}
    assert task_metrics.main_metric("acc1", top5, y) == pytest.approx(3 / 6)
    assert task_metrics.jaccard_10_12([1.0, 0.5, 0.25], [5, 10, 12]) == pytest.approx(0.375)


# -------------------------------------------------------------------------------------- published layouts
def write_wds(root, key, n=12, classes=("cat", "dog", "bird"), ext="webp", shards=2, metadata_columns=0,
              size=32):
    """A task as DataComp's download_evalsets.py leaves it: root/wds_<task>_test/ with classnames.txt,
    zeroshot_classification_templates.txt, test/nshards.txt and test/<i>.tar of <key>.<ext> + <key>.cls
    (+ <key>.npy, the sample's metadata row)."""
    folder = root / datacomp.task(key).hub_id.split("/")[1]
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nitap of a {c}.\n")
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    rng = np.random.default_rng(0)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(folder / "test" / f"{s}.tar", "w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                members = {}
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format=ext.upper())
                members[f"s{i:06d}.{ext}"] = buf.getvalue()
                members[f"s{i:06d}.cls"] = str(i % len(classes)).encode()
                if metadata_columns:
                    npy = io.BytesIO()
                    np.save(npy, np.array([i % 3] + [7] * (metadata_columns - 1), dtype=np.int64))
                    members[f"s{i:06d}.npy"] = npy.getvalue()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def write_winogavil(root, n=4, size=32):
    """WinoGAViL as its parquet export serves it (columns of eval_utils/wino_eval.py), 5 or 10 candidates."""
    rng = np.random.default_rng(1)
    rows = {"candidate_images": [], "cue": [], "candidates": [], "associations": []}
    for i in range(n):
        k = 10 if i % 2 else 5
        rows["candidate_images"].append([Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                                         for _ in range(k)])
        rows["cue"].append(["apple", "dog", "ice", "tree"][i % 4])
        rows["candidates"].append([f"c{j}" for j in range(k)])
        rows["associations"].append([f"c{j}" for j in range(2)])
    features = datasets.Features({"candidate_images": datasets.Sequence(datasets.Image()),
                                  "cue": datasets.Value("string"),
                                  "candidates": datasets.Sequence(datasets.Value("string")),
                                  "associations": datasets.Sequence(datasets.Value("string"))})
    path = root / "winogavil" / "TEST" / "test" / "0000.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)


def write_flickr_export(root, n=4, size=32):
    """nlphuji/flickr30k's parquet export (refs/convert/parquet, TEST/test/): DataComp keeps every row."""
    rng = np.random.default_rng(2)
    rows = {"image": [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)],
            "caption": [[f"image {i} caption {j}" for j in range(5)] for i in range(n)],
            "split": ["test", "train", "val", "train"][:n]}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "split": datasets.Value("string")})
    path = root / "flickr30k" / "TEST" / "test" / "0000.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)


def test_webdataset_task_loads_with_its_own_names_and_templates(tmp_path):
    write_wds(tmp_path, "vtab/caltech101", n=9, shards=2, ext="webp")
    d = harness_data.load({"name": "datacomp:vtab/caltech101", "root": str(tmp_path)}, "test")
    assert len(d) == 9 and d.classnames == ["cat", "dog", "bird"]
    assert d.templates == ["a photo of a {}.", "itap of a {}."]  # the file's CLIP_benchmark "{c}" read as "{}"
    assert sorted(d.labels.tolist()) == sorted([i % 3 for i in range(9)])
    write_wds(tmp_path, "wilds/fmow", n=6, shards=1, ext="png", metadata_columns=3)
    fmow = datacomp.load("wilds/fmow", tmp_path)
    assert np.asarray(fmow.dataset["metadata"]).shape == (6, 3)


def test_a_missing_shard_or_no_copy_is_refused_naming_the_layout(tmp_path, monkeypatch):
    folder = write_wds(tmp_path, "cifar10", shards=2)
    (folder / "test" / "1.tar").unlink()
    with pytest.raises(ConfigError, match="test/1.tar is missing.*djghosh/wds_cifar10_test.*download_evalsets"):
        datacomp.load("cifar10", tmp_path)
    with pytest.raises(ConfigError, match="no .*wds_gtsrb_test/test/nshards.txt"):
        datacomp.load("gtsrb", tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="djghosh/wds_gtsrb_test, main: classnames.txt.*HF_DATASETS_OFFLINE=0"
                                                ".*root/wds_gtsrb_test/"):
        datacomp.load("gtsrb")


def test_the_named_list_runs_each_kind_of_task(tmp_path):
    """A few tasks of each loader kind through the zero-shot suite, on a small random open_clip model: each row
    carries its task's main metric, computed by harness.methods.task_metrics beside the suite's own columns."""
    write_wds(tmp_path, "vtab/caltech101", n=9, shards=2)
    write_wds(tmp_path, "cifar10", n=6, shards=1, ext="png")
    write_wds(tmp_path, "wilds/fmow", n=9, shards=2, metadata_columns=3)
    write_wds(tmp_path, "fairness/dollar_street", n=9, shards=1, metadata_columns=3,
              classes=("a", "b", "c", "d", "e", "f"))
    write_flickr_export(tmp_path)
    write_winogavil(tmp_path)
    weights = tmp_path / "s32.pt"
    torch.save(load_open_clip("ViT-S-32", "random", seed=1, force_image_size=32).state_dict(), weights)
    keys = ["vtab/caltech101", "cifar10", "wilds/fmow", "fairness/dollar_street", "retrieval/flickr30k",
            "misc/winogavil"]
    config = {"datasets": [{"name": f"datacomp:{k}", "root": str(tmp_path)} for k in keys], "batch_size": 8,
              "models": [{"id": "s32", "model": "open_clip:ViT-S-32", "weights": str(weights),
                          "kwargs": {"force_image_size": 32}}]}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    zs_eval.validate(config, ctx)
    df = pd.DataFrame(zs_eval.run_unit("eval:s32", config, ctx))
    assert df.dataset.tolist() == [f"datacomp:{k}" for k in keys]
    row = df.set_index("datacomp_task")
    assert row.loc["Caltech-101", "main_metric"] == pytest.approx(row.loc["Caltech-101", "mean_per_class_recall"])
    assert row.loc["CIFAR-10", "main_metric"] == pytest.approx(row.loc["CIFAR-10", "top1"])
    assert row.loc["Flickr", "images"] == 4 and row.loc["Flickr", "captions"] == 20  # every row, not Karpathy's
    assert row.loc["Flickr", "main_metric"] == pytest.approx(row.loc["Flickr", "mean_R@1"])
    assert row.loc["FMoW", "main_metric"] <= row.loc["FMoW", "top1"] + 1e-9  # the worst region is at most the mean
    assert row.loc["Dollar Street", "main_metric"] <= row.loc["Dollar Street", "top5"] + 1e-9
    assert row.loc["WinoGAViL", "images"] == 4 and 0 <= row.loc["WinoGAViL", "main_metric"] <= 100
    assert df.main_metric.between(0, 100).all()
    table = zs_eval.tables(df.to_dict("records"), config)[0].df
    agg = table[table.task == "DataComp aggregate"]
    assert agg.dataset.tolist() == ["datacomp: ImageNet", "datacomp: ImageNet dist. shifts", "datacomp: VTAB",
                                    "datacomp: Retrieval", "datacomp: Average"]
    assert agg.main_metric.isna().all()  # 6 of 38 tasks: no group is complete, no average is claimed
    assert (agg.datasets == 6).all()


def test_the_named_list_expands_to_the_38(tmp_path):
    specs = harness_data.expand(["cifar10", {"name": "datacomp", "root": str(tmp_path)}])
    assert len(specs) == 39 and specs[0].name == "cifar10"
    assert [s.name for s in specs[1:]] == [f"datacomp:{t.key}" for t in datacomp.TASKS]
    assert all(s.root == str(tmp_path) for s in specs[1:])
    with pytest.raises(ConfigError, match="datacomp:KEY"):
        harness_data.parse("datacomp")
    from harness.evals import linear_probe as lp_eval

    for name in ("datacomp", "datacomp:cifar10"):  # test splits only: refused before any work, naming the suite
        with pytest.raises(ConfigError, match="zero-shot evaluation .*run it in the zero_shot suite"):
            lp_eval.validate({"datasets": [name], "models": []}, Context(device=torch.device("cpu")))

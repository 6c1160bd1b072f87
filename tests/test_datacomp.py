"""DataComp's 38 tasks: the declarations against a verbatim copy of DataComp's tasklist.yml, the published numbers as
open_clip's table prints them, the aggregate rows of the full profile's models, each metric against scikit-learn or
a hand-worked case, and the loaders on copies in DataComp's download layout written by the peers' own writers
(tests/datacomp_layouts.py). tests/test_datacomp_parity.py runs CLIP_benchmark's and WILDS' code beside them."""

import io
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import balanced_accuracy_score, f1_score, jaccard_score

import harness.data as harness_data
from harness import models
from harness.data import datacomp
from harness.evals import zero_shot as zs_eval
from harness.infra.suite import ConfigError, Context
from harness.methods import task_metrics
from harness.run.suites import load_suite
from tests import datacomp_layouts as layouts

zs_suite = load_suite("zero_shot")

TASKLIST = Path(__file__).parent / "data" / "datacomp_tasklist.yml"  # mlfoundations/datacomp tasklist.yml at 4a8df19


# ------------------------------------------------------------------------------------------- declarations
def test_the_38_tasks_as_tasklist_yml_declares_them():
    listed = yaml.safe_load(TASKLIST.read_text())
    # aggregate_scores.py keeps the tasks that have a main metric: every one but FairFace and UTKFace, whose
    # metrics hold no acc1 (the default main_metric)
    expected = [(k, v["name"], v["size"], v.get("main_metric", "acc1")) for k, v in listed.items()
                if k not in ("fairness/fairface", "fairness/utkface")]
    assert len(expected) == 38
    assert [(t.key, t.name, t.size, t.metric) for t in datacomp.TASKS] == expected
    assert all(set(g) <= {t.name for t in datacomp.TASKS} for g in datacomp.GROUPS.values())
    # where download_evalsets.py fetches each from
    assert datacomp.task("vtab/caltech101").hub_id == "djghosh/wds_vtab-caltech101_test"
    assert datacomp.task("fairness/geode").hub_id == "djghosh/wds_geode_test"
    flickr = datacomp.task("retrieval/flickr_1k_test_image_text_retrieval")
    assert flickr.hub_id == "nlphuji/flickr_1k_test_image_text_retrieval" and flickr.size == 1000
    assert datacomp.task("misc/winogavil").hub_id == "nlphuji/winogavil"
    assert [t.kind for t in datacomp.TASKS].count("wds") == 35
    assert all(t.hub_id in t.source for t in datacomp.TASKS)
    with pytest.raises(ConfigError, match="unknown DataComp task 'retrieval/flickr30k' \\(did you mean retrieval/"):
        datacomp.task("retrieval/flickr30k")


def test_the_published_numbers_are_the_tables_own():
    """Each published value is the table's four-decimal string as printed; the 38-task average is the table's own
    column, not a mean taken here. Their consistency: each of the 38 values is the model's score rounded to 4
    decimals (error <= 5e-5), so their mean is within 5e-5 of the mean of the scores, which the published average is
    within 5e-5 of (rounded likewise): |mean of the 38 printed values - printed average| <= 1e-4. Measured: at most
    5.26e-5 (ViT-L-14/openai)."""
    assert set(datacomp.PUBLISHED) == {m["model"].partition(":")[2] for m in zs_suite.FULL_MODELS}
    names = {t.name for t in datacomp.TASKS}
    for model, published in datacomp.PUBLISHED.items():
        assert set(published) == names | {"Average"}
        assert all(round(v, 4) == v for v in published.values()), model  # nothing derived: 4 decimals, as printed
        scores = {k: v for k, v in published.items() if k != "Average"}
        assert task_metrics.aggregate(scores, datacomp.GROUPS, 38)["Average"] == pytest.approx(
            published["Average"], abs=1e-4), model
    assert datacomp.PUBLISHED["ViT-L-14/openai"]["Average"] == 0.6173


def _full_profile_rows(spec, values: dict[str, float]) -> list[dict]:
    """The rows the zero_shot suite writes for a model on DataComp's 38 tasks (harness.evals.zero_shot.identity),
    each task's main metric given."""
    config = zs_suite.get_config("full")
    sets = harness_data.expand([{"name": "datacomp", "root": "/data/datacomp"}])
    rows = []
    for ds in sets:
        row = zs_eval.identity(spec, ds, config, len(sets))
        rows.append({**row, "library": "open_clip", "task": "classification",
                     "main_metric": 100.0 * values[row["datacomp_task"]]})
    return rows


@pytest.mark.parametrize("declared", zs_suite.FULL_MODELS, ids=lambda d: d["model"])
def test_the_aggregate_rows_of_full_profile_models_carry_the_published_numbers(declared):
    """With the full profile's own model declarations: each task row carries the table's per-task number, the
    Average and ImageNet rows the table's own Average and ImageNet 1k, the group rows none (the table has none)."""
    spec = models.parse(declared)
    published = datacomp.PUBLISHED[declared["model"].partition(":")[2]]
    rows = _full_profile_rows(spec, published)
    assert [r["published_top1"] for r in rows] == pytest.approx([100 * published[t.name] for t in datacomp.TASKS])
    table = zs_eval.tables(rows, zs_suite.get_config("full"))[0].df
    agg = table[table.task == "DataComp aggregate"].set_index("dataset")
    assert agg.loc["datacomp: Average", "published_top1"] == pytest.approx(100 * published["Average"])
    assert agg.loc["datacomp: ImageNet", "published_top1"] == pytest.approx(100 * published["ImageNet 1k"])
    for group in datacomp.GROUPS:
        assert np.isnan(agg.loc[f"datacomp: {group}", "published_top1"])
    # a model scoring exactly the printed per-task numbers: its average is the printed one within the 1e-4 bound
    assert abs(agg.loc["datacomp: Average", "diff_vs_published"]) <= 1e-2


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
    # grouped by the other column (all 9): one group, the mean
    assert task_metrics.main_metric("acc_wg", top5, y, meta, 1) == pytest.approx(3 / 6)
    assert task_metrics.main_metric("acc1", top5, y) == pytest.approx(3 / 6)
    assert task_metrics.jaccard_10_12([1.0, 0.5, 0.25], [5, 10, 12]) == pytest.approx(0.375)


# -------------------------------------------------------------------------------------- published layouts
def test_a_task_whose_shards_mix_formats_gives_every_image(tmp_path):
    """webp, png and jpg samples in one task (datasets' webdataset builder would give the png and jpg samples no
    image): every image read, each as its bytes decode; a damaged image and a sample without one are counted and
    named, never an AttributeError."""
    pictures = layouts.images(9)
    layouts.write_wds(tmp_path, "vtab/caltech101", pictures, [i % 3 for i in range(9)], ["cat", "dog", "bird"],
                      formats=("webp", "png", "jpg"), per_shard=4)
    d = harness_data.load({"name": "datacomp:vtab/caltech101", "root": str(tmp_path)}, "test")
    assert len(d) == 9 and d.classnames == ["cat", "dog", "bird"]
    assert d.templates == ["a photo of a {}.", "itap of a {}."]  # the file's CLIP_benchmark "{c}" read as "{}"
    assert d.labels.tolist() == [i % 3 for i in range(9)]
    from harness.data.images import to_pil

    for i, cell in enumerate(d.dataset["image"]):
        jpg = {"bytes": layouts.encode(pictures[i], "jpg")}
        expected = np.asarray(pictures[i]) if i % 3 < 2 else np.asarray(to_pil(jpg))
        assert np.array_equal(np.asarray(to_pil(cell)), expected), i  # webp lossless and png exact, jpg as decoded

    from harness.methods.features import extract

    root = tmp_path / "broken"
    layouts.write_wds(root, "cifar10", pictures[:3] + [b"not an image"], [0, 1, 2, 0], ["a", "b", "c"],
                      formats=("png",))
    shard = root / "wds_cifar10_test" / "test" / "0.tar"
    with tarfile.open(shard, "a") as tar:  # a sample holding its label only
        info = tarfile.TarInfo("s0000009.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    data = datacomp.load("cifar10", root)
    assert len(data) == 5
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        feats = extract(lambda x: x.flatten(1)[:, :4], data, lambda im: torch.zeros(3, 4, 4), model_id="m",
                        weights="w")
    assert len(feats.labels) == 3
    assert any("s0000003.png" in s and "UnidentifiedImageError" in s for s in feats.skipped)
    assert any("s0000009 (no image)" in s for s in feats.skipped)


def test_a_datacomp_download_is_found_as_it_lies(tmp_path):
    """The nlphuji tasks in root/hf_cache as datasets caches them: the harness reads the rows datasets' own
    load_dataset (DataComp's call in retr_eval.py and wino_eval.py) reads; a parquet export is found too."""
    flickr = "retrieval/flickr_1k_test_image_text_retrieval"
    layouts.write_hf_cache(tmp_path, flickr, layouts.retrieval_rows(layouts.images(4), 5),
                           layouts.RETRIEVAL_FEATURES)
    layouts.write_hf_cache(tmp_path, "misc/winogavil", layouts.winogavil_rows(3), layouts.WINOGAVIL_FEATURES)
    datacomp.check([flickr, "misc/winogavil"], tmp_path)
    theirs = datasets.load_dataset("nlphuji/flickr_1k_test_image_text_retrieval", split="test",
                                   cache_dir=str(tmp_path / "hf_cache"))
    with pytest.warns(UserWarning, match="4 test examples read, tasklist.yml says 1000"):
        r = harness_data.load_retrieval({"name": f"datacomp:{flickr}", "root": str(tmp_path)})
    assert len(r.data) == len(theirs) == 4
    assert r.captions == [c for caps in theirs["caption"] for c in caps] and r.caption_image == [
        i for i in range(4) for _ in range(5)]
    with pytest.warns(UserWarning, match="tasklist.yml says 3563"):
        wino = datacomp.load_winogavil(tmp_path)
    theirs = datasets.load_dataset("nlphuji/winogavil", split="test", cache_dir=str(tmp_path / "hf_cache"))
    assert wino["cue"] == theirs["cue"] and wino["associations"] == theirs["associations"]

    export = tmp_path / "export"
    layouts.write_parquet_export(export, "retrieval/mscoco_2014_5k_test_image_text_retrieval",
                                 layouts.retrieval_rows(layouts.images(3), 2), layouts.RETRIEVAL_FEATURES)
    with pytest.warns(UserWarning, match="tasklist.yml says 5000"):
        coco = datacomp.load_retrieval("retrieval/mscoco_2014_5k_test_image_text_retrieval", export)
    assert len(coco.data) == 3 and len(coco.captions) == 6


def test_missing_tasks_are_refused_before_any_work_each_named(tmp_path):
    config = {"datasets": [{"name": "datacomp", "root": str(tmp_path)}], "models": ["open_clip:ViT-S-32"]}
    ctx = Context(device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^38 of 38 DataComp task\(s\) not found \(vtab/caltech101: no "
                                          r".*wds_vtab-caltech101_test/test/nshards.txt; .*and 33 more\): fetch "
                                          r"them with python download_evalsets.py") as e:
        zs_eval.validate(config, ctx)
    assert "\n" not in str(e.value)
    pictures = layouts.images(4)
    folder = layouts.write_wds(tmp_path, "cifar10", pictures, [0, 1, 0, 1], ["a", "b"], per_shard=2)
    layouts.write_hf_cache(tmp_path, "misc/winogavil", layouts.winogavil_rows(2), layouts.WINOGAVIL_FEATURES)
    with pytest.raises(ConfigError, match=r"^36 of 38"):
        zs_eval.validate(config, ctx)
    (folder / "test" / "1.tar").unlink()
    one = {"datasets": [{"name": "datacomp:cifar10", "root": str(tmp_path)}], "models": ["open_clip:ViT-S-32"]}
    with pytest.raises(ConfigError, match=r"1 of 1 .*cifar10: no .*wds_cifar10_test/test/1.tar\): fetch them"):
        zs_eval.validate(one, ctx)
    with pytest.raises(ConfigError, match="retrieval/flickr_1k_test_image_text_retrieval: no .*hf_cache/"
                                          "nlphuji___flickr_1k_test_image_text_retrieval/"):
        harness_data.check({"name": "datacomp:retrieval/flickr_1k_test_image_text_retrieval",
                            "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="data_dir .*nowhere does not exist"):
        harness_data.check({"name": "datacomp:cifar10", "root": str(tmp_path / "nowhere")})


def test_without_a_copy_the_hub_error_names_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    with pytest.raises(ConfigError, match="cifar10: no the hub cache's djghosh/wds_cifar10_test.*HF_HUB_OFFLINE=0"):
        harness_data.check("datacomp:cifar10")
    with pytest.raises(FileNotFoundError, match="djghosh/wds_gtsrb_test, main: classnames.txt.*HF_DATASETS_OFFLINE=0"
                                                ".*root/wds_gtsrb_test/"):
        datacomp.load("gtsrb")


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


def test_table_frame_of_rows():  # the aggregate rows need every task: 6 of 38 give none
    spec = models.parse(zs_suite.FULL_MODELS[0])
    rows = _full_profile_rows(spec, datacomp.PUBLISHED["ViT-B-32/openai"])[:6]
    table = zs_eval.tables(rows, zs_suite.get_config("full"))[0].df
    agg = table[table.task == "DataComp aggregate"]
    assert agg.dataset.tolist() == ["datacomp: ImageNet", "datacomp: ImageNet dist. shifts", "datacomp: VTAB",
                                    "datacomp: Retrieval", "datacomp: Average"]
    assert agg.main_metric.isna().all() and (agg.datasets == 6).all()
    assert isinstance(table, pd.DataFrame)

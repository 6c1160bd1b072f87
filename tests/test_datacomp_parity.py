"""The harness's DataComp numbers against the peers' own code on the same inputs: CLIP_benchmark 1.4.0 (the version
DataComp's requirements.txt pins: its webdataset reader, zero-shot classifier, classification and retrieval), WILDS
2.0.0's metrics and groupers driven as DataComp's eval_utils drive them, and webdataset 0.2.31, for one random-weight
open_clip model on tiny tasks written in DataComp's download layout (tests/datacomp_layouts.py).

What is re-expressed here, because no package ships it (mlfoundations/datacomp at 4a8df19, cited at each): the
evaluator subclasses of eval_utils/wilds_eval.py and fairness_eval.py (their _metadata_fields and groupers, over
WILDS' own classes), the avg_over_groups replacement DataComp installs into WILDS, the WinoGAViL loop of
wino_eval.py, retr_eval.py's RetrievalDataset (two lines) and aggregate_scores.py's means.

Every metric kind of the 38 tasks is compared to 1e-6: acc1, acc5, mean per-class recall, macro-F1 (iWildCam), the
worst region (FMoW, GeoDE), the worst income group's top-5 (Dollar Street), mean recall@1 (Flickr, MSCOCO), the
Jaccard score on 10-12 candidates (WinoGAViL) and the aggregates; and each image's label and top-5 classes. The
labels are drawn from the model's own ranking with a chosen hit rate per group, so that no metric is degenerate
(every per-group accuracy differs, some classes are predicted that are absent); the smallest margin between a
model's two best classes is checked to be far above round-off, so the equality does not rest on a near tie. Each
planted error below (test_a_planted_error_is_caught) makes the comparison fail.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness import tasks
from harness.data import datacomp
from harness.evals import zero_shot as zs_eval
from harness.infra import predictions
from harness.infra.suite import Context
from harness.methods import task_metrics
from tests import datacomp_layouts as layouts

cb_builder = pytest.importorskip("clip_benchmark.datasets.builder", reason="the peers: nox installs them")
from clip_benchmark.metrics import zeroshot_classification as zsc  # noqa: E402
from clip_benchmark.metrics import zeroshot_retrieval as zsr  # noqa: E402

ARCH = "ViT-S-32"
# a small tower each; the image tower average-pools its 16 patch tokens, so a random model's predictions vary
KWARGS = {"force_image_size": 32, "embed_dim": 64,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32,
                         "pool_type": "avg"},
          "text_cfg": {"layers": 2, "width": 64, "heads": 2}}
TOL = 1e-6
FLICKR, MSCOCO = "retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval"

# (task, number of classes, images, image formats, metadata columns: (name, hit rate by value or None))
CLASSIFICATION = [
    ("vtab/caltech101", 8, 48, ("webp", "png", "jpg"), None),
    ("cifar10", 6, 36, ("png",), None),
    ("wilds/iwildcam", 7, 42, ("jpg", "webp"), ["location", "sequence", "year", "month", "day", "hour", "minute",
                                                "second", "y"]),
    ("wilds/camelyon17", 2, 30, ("png",), ["hospital", "slide", "y"]),
    ("wilds/fmow", 6, 48, ("webp", "png"), ["region", "year", "y"]),
    ("fairness/dollar_street", 12, 48, ("jpg",), ["income_ds", "income_meta", "region"]),
    ("fairness/geode", 6, 40, ("webp",), ["region", "country"]),
]
# hit rate of each value of the grouped column (0..3; value 2 left empty, as a region with no image); the other
# columns are drawn independently of the hits, so grouping by one of them gives another worst group
GROUP_HIT_RATE = {0: 0.8, 1: 0.45, 3: 0.65}


# ------------------------------------------------------------------------------------------ the fixture
def _peer_model(path):
    """The model as DataComp's eval_utils/wds_eval.py create_model builds it (open_clip.create_model_and_transforms
    with pretrained=<checkpoint>), and its tokenizer."""
    import open_clip

    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=str(path), **KWARGS)
    return model.eval(), transform, open_clip.get_tokenizer(ARCH)


def _ranking(model, transform, tokenizer, pictures, classes, templates):
    clf = zsc.zero_shot_classifier(model, tokenizer, classes, list(templates), "cpu")
    x = torch.stack([transform(p) for p in pictures])
    with torch.no_grad():
        f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    return (100.0 * f @ clf).argsort(dim=1, descending=True).numpy()


def _design(key, ranks, columns, rng):
    """Labels and metadata: the grouped column (the evaluator's first field) takes values 0, 1, 3, and each image's
    label is a hit of the metric (its top-1, or a class in its top-5 for Dollar Street) with that value's rate."""
    n = len(ranks)
    meta = None
    group = np.array([0, 1, 3])[np.arange(n) % 3]
    if columns:
        meta = rng.integers(0, 4, (n, len(columns)))
        meta[:, 0] = group
    hit = rng.random(n) < np.vectorize(GROUP_HIT_RATE.get)(group)
    # one predicted class is no image's label (macro-F1 then depends on which classes it averages over): the
    # images predicted as the least predicted class are misses, and no miss is labelled with it
    predicted, counts = np.unique(ranks[:, 0], return_counts=True)
    absent = predicted[np.argmin(counts)]
    hit &= ranks[:, 0] != absent
    top = 5 if key == "fairness/dollar_street" else 1
    chosen = ranks[np.arange(n), rng.integers(0, top, n)]
    hit &= chosen != absent
    worst = np.where(ranks[:, -1] != absent, ranks[:, -1], ranks[:, -2])
    labels = np.where(hit, chosen, worst)
    if columns and columns[-1] == "y":  # WILDS keeps the label as its last metadata field
        meta[:, -1] = labels
    return labels, meta


def _captions(model, transform, tokenizer, pictures, per, rng):
    """`per` captions for each image from a pool of phrases: for every other image the phrases the model finds most
    like it, else drawn at random, so that recall is neither chance nor perfect and differs by direction."""
    words = ["red", "blue", "green", "dark", "bright", "striped", "noisy", "plain", "left", "right", "soft", "sharp"]
    pool = [f"a {a} {b} picture number {i}" for i, (a, b) in enumerate(
        (a, b) for a in words for b in words if a != b)][: 8 * per * len(pictures)]
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(p) for p in pictures]), normalize=True)
        txt = model.encode_text(tokenizer(pool), normalize=True)
    order, used, out = (img @ txt.T).argsort(dim=1, descending=True).numpy(), set(), []
    for i in range(len(pictures)):
        ranked = order[i] if i % 2 == 0 else rng.permutation(len(pool))
        mine = [int(j) for j in ranked if int(j) not in used][:per]
        used.update(mine)
        out.append([pool[j] for j in mine])
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tasks written, the harness's rows and the peers' numbers for the same model."""
    from harness.models.open_clip import create

    root = tmp_path_factory.mktemp("datacomp")
    weights = root / "tiny.pt"
    torch.save(create(ARCH, "random", seed=1, **KWARGS).state_dict(), weights)
    model, transform, tokenizer = _peer_model(weights)
    rng = np.random.default_rng(0)
    for i, (key, n_classes, n, formats, columns) in enumerate(CLASSIFICATION):
        pictures = layouts.images(n, seed=10 + i)
        classes = [f"class {c}" for c in ("abcdefghijklmnopqrstuvwxyz"[:n_classes])]
        ranks = _ranking(model, transform, tokenizer, pictures, classes, ("a photo of a {c}.", "itap of a {c}."))
        labels, meta = _design(key, ranks, columns, rng)
        layouts.write_wds(root, key, pictures, labels.tolist(), classes, formats=formats, metadata=meta,
                          per_shard=16)
    for key, n, per, seed in ((FLICKR, 20, 5, 30), (MSCOCO, 16, 3, 31)):
        pictures = layouts.images(n, seed=seed)
        layouts.write_hf_cache(root, key, {"image": pictures, "caption": _captions(
            model, transform, tokenizer, pictures, per, rng)}, layouts.RETRIEVAL_FEATURES)
    layouts.write_hf_cache(root, "misc/winogavil", layouts.winogavil_rows(16), layouts.WINOGAVIL_FEATURES)
    keys = [k for k, *_ in CLASSIFICATION] + [FLICKR, MSCOCO, "misc/winogavil"]
    config = {"datasets": [{"name": f"datacomp:{k}", "root": str(root)} for k in keys], "batch_size": 16,
              "models": [{"id": "tiny", "model": f"open_clip:{ARCH}", "weights": str(weights), "kwargs": KWARGS}]}
    ctx = Context(device=torch.device("cpu"), cache_dir=root / "cache")
    return {"root": root, "keys": keys, "config": config, "ctx": ctx, "rows": harness_rows(config, ctx),
            "peers": peer_numbers(root, model, transform, tokenizer)}


def harness_rows(config, ctx) -> pd.DataFrame:
    zs_eval.validate(config, ctx)
    with pytest.warns(UserWarning, match="tasklist.yml says"):  # tiny tasks: not DataComp's sizes
        rows = zs_eval.run_unit("eval:tiny", config, ctx)
    return pd.DataFrame(rows).set_index("dataset")


# ------------------------------------------------------------------------------------------- the peers
def _wilds_evaluators():
    """eval_utils/wilds_eval.py and fairness_eval.py's evaluators over WILDS' own classes (re-expressed: DataComp is
    no package), with DataComp's replacement of wilds.common.utils.avg_over_groups (which would need torch_scatter)."""
    import wilds.common.utils

    def _avg_over_groups(v, g, n_groups):  # wilds_eval.py, installed before WILDS' metrics are imported
        group_count = wilds.common.utils.get_counts(g, n_groups)
        group_avgs = torch.zeros(n_groups, dtype=torch.float, device=v.device).scatter_(0, index=g, src=v,
                                                                                        reduce="add")
        return group_avgs / group_count, group_count

    wilds.common.utils.avg_over_groups = _avg_over_groups
    from wilds.common.grouper import CombinatorialGrouper
    from wilds.common.metrics.all_metrics import F1, Accuracy, Recall
    from wilds.datasets.wilds_dataset import WILDSDataset

    class WILDSEvaluator(WILDSDataset):
        def __init__(self, metadata):
            self._metadata_array = metadata

    class IWildCam(WILDSEvaluator):
        def __init__(self, metadata):
            super().__init__(metadata)
            self._metadata_fields = ["location", "sequence", "year", "month", "day", "hour", "minute", "second", "y"]
            self._eval_grouper = CombinatorialGrouper(dataset=self, groupby_fields=["location"])

        def eval(self, y_pred, y_true, metadata):
            results = {}
            for metric in (Accuracy(), Recall(average="macro"), F1(average="macro")):
                results.update(metric.compute(y_pred, y_true))
            return results

    class Camelyon17(WILDSEvaluator):
        def __init__(self, metadata):
            super().__init__(metadata)
            self._metadata_fields = ["hospital", "slide", "y"]
            self._eval_grouper = CombinatorialGrouper(dataset=self, groupby_fields=["slide"])

        def eval(self, y_pred, y_true, metadata):
            return self.standard_group_eval(Accuracy(), self._eval_grouper, y_pred, y_true, metadata)[0]

    class FMoW(WILDSEvaluator):
        def __init__(self, metadata):
            super().__init__(metadata)
            self._metadata_fields = ["region", "year", "y"]
            self._eval_groupers = {"year": CombinatorialGrouper(dataset=self, groupby_fields=["year"]),
                                   "region": CombinatorialGrouper(dataset=self, groupby_fields=["region"])}

        def eval(self, y_pred, y_true, metadata):
            metric = Accuracy()
            results = self.standard_group_eval(metric, self._eval_groupers["year"], y_pred, y_true, metadata)[0]
            region = self._eval_groupers["region"]
            per = metric.compute_group_wise(y_pred, y_true, region.metadata_to_group(metadata), region.n_groups)
            kept = [per[metric.group_metric_field(g)] for g in range(region.n_groups)
                    if per[metric.group_count_field(g)] != 0 and "Other" not in region.group_field_str(g)]
            results[f"{metric.name}_worst_region"] = metric.worst(kept)
            return results

    class TopKAccuracy(Accuracy):  # fairness_eval.py
        def __init__(self, prediction_fn=None, name=None):
            super().__init__(name=name or "acc_topk")

        def _compute_element_wise(self, y_pred, y_true):
            return (y_pred == y_true.unsqueeze(-1)).any(-1).float()

    class DollarStreet(WILDSEvaluator):
        def __init__(self, metadata):
            super().__init__(metadata)
            self._metadata_fields = ["income_ds", "income_meta", "region"]
            self._eval_grouper = CombinatorialGrouper(dataset=self, groupby_fields=["income_ds"])

        def eval(self, y_pred, y_true, metadata):
            return self.standard_group_eval(TopKAccuracy(name="acc_top5"), self._eval_grouper, y_pred, y_true,
                                            metadata)[0]

    class GeoDE(WILDSEvaluator):
        def __init__(self, metadata):
            super().__init__(metadata)
            self._metadata_fields = ["region", "country"]
            self._eval_grouper = CombinatorialGrouper(dataset=self, groupby_fields=["region"])

        def eval(self, y_pred, y_true, metadata):
            return self.standard_group_eval(Accuracy(), self._eval_grouper, y_pred, y_true, metadata)[0]

    return {"wilds/iwildcam": IWildCam, "wilds/camelyon17": Camelyon17, "wilds/fmow": FMoW,
            "fairness/dollar_street": DollarStreet, "fairness/geode": GeoDE}


def _peer_classification(root, key, model, transform, tokenizer, evaluators) -> dict:
    """eval_utils/wds_eval.py evaluate_webdataset (+ wilds_eval / fairness_eval for the grouped tasks), through
    CLIP_benchmark's own reader, classifier, classification loop and accuracy."""
    import webdataset as wds
    from sklearn.metrics import balanced_accuracy_score

    task = key.removeprefix("fairness/")
    folder = root / f"wds_{task.replace('/', '-')}_test"
    dataset = cb_builder.build_dataset(dataset_name=f"wds/{task}", root=str(folder), transform=transform,
                                       split="test", download=False)
    loader = torch.utils.data.DataLoader(dataset.batched(16), batch_size=None, shuffle=False, num_workers=0)
    classifier = zsc.zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates, "cpu")
    logits, target = zsc.run_classification(model, classifier, loader, "cpu", amp=False)
    pred = logits.argmax(axis=1)
    acc1, acc5 = zsc.accuracy(logits, target, topk=(1, 5)) if len(dataset.classes) >= 5 else (
        zsc.accuracy(logits, target, topk=(1,))[0], None)
    out = {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy_score(target, pred),
           "label": target.numpy(), "top5": torch.topk(logits, min(5, logits.shape[1]), dim=1)[1].numpy()}
    logit_sorted = logits.sort(dim=1, descending=True).values
    out["margin"] = (logit_sorted[:, 0] - logit_sorted[:, 1]).numpy()
    if key in evaluators:  # the metadata as create_metadata_loader reads it: (cls, npy) of each sample, in order
        last = int((folder / "test" / "nshards.txt").read_text()) - 1
        pairs = list(wds.WebDataset(f"{folder}/test/{{0..{last}}}.tar").decode().to_tuple("cls", "npy"))
        metadata = torch.tensor(np.stack([m for _, m in pairs]))
        y_pred = torch.topk(logits, 5, dim=1)[1] if key == "fairness/dollar_street" else pred
        out.update(evaluators[key](metadata).eval(y_pred, target, metadata))
    return out


def _peer_retrieval(root, key, model, transform, tokenizer) -> dict:
    """eval_utils/retr_eval.py: datasets.load_dataset("nlphuji/<task>", split="test", cache_dir=<root>/hf_cache),
    its RetrievalDataset, CLIP_benchmark's image_captions_collate_fn and zeroshot_retrieval.evaluate."""
    import datasets

    hf = datasets.load_dataset(datacomp.task(key).hub_id, split="test", cache_dir=str(root / "hf_cache"))

    class RetrievalDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(hf)

        def __getitem__(self, index):
            return transform(hf[index]["image"]), hf[index]["caption"]

    loader = torch.utils.data.DataLoader(RetrievalDataset(), batch_size=8, shuffle=False, num_workers=0,
                                         collate_fn=cb_builder.image_captions_collate_fn)
    metrics = zsr.evaluate(model, loader, tokenizer, recall_k_list=[1, 5, 10], device="cpu")
    metrics["mean_recall@1"] = 0.5 * (metrics["text_retrieval_recall@1"] + metrics["image_retrieval_recall@1"])
    return metrics


def _peer_winogavil(root, model, transform, tokenizer) -> dict:
    """eval_utils/wino_eval.py evaluate_winogavil_dataset, its loop as written (autocast off on a CPU)."""
    import datasets
    from sklearn.metrics import jaccard_score

    hf = datasets.load_dataset("nlphuji/winogavil", split="test", cache_dir=str(root / "hf_cache"))

    def get_clip_prompt(item):
        item = item.lower()
        return f"An {item}" if item[0] in ["a", "e", "i", "o", "u"] else f"A {item}"

    scores, groups = [], []
    for example in hf:
        images = torch.stack([transform(img) for img in example["candidate_images"]])
        text = tokenizer([get_clip_prompt(example["cue"])])
        y_true = np.isin(example["candidates"], example["associations"])
        with torch.no_grad():
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(text, normalize=True)
            image_logits = (text_features @ image_features.T).squeeze(0).cpu().numpy()
        topk_indices = np.argsort(image_logits)[-y_true.sum():]
        y_pred = np.isin(np.arange(len(images)), topk_indices)
        scores.append(jaccard_score(y_true, y_pred))
        groups.append(len(images))
    scores, groups = np.array(scores), np.array(groups)
    return {"avg_jaccard_score": scores.mean(), "jaccard_score_10-12": scores[groups >= 10].mean()}


def peer_numbers(root, model, transform, tokenizer) -> dict:
    evaluators = _wilds_evaluators()
    out = {key: _peer_classification(root, key, model, transform, tokenizer, evaluators)
           for key, *_ in CLASSIFICATION}
    out.update({key: _peer_retrieval(root, key, model, transform, tokenizer) for key in (FLICKR, MSCOCO)})
    out["misc/winogavil"] = _peer_winogavil(root, model, transform, tokenizer)
    return out


PEER_MAIN = {"acc1": "acc1", "mean_per_class_recall": "mean_per_class_recall", "F1-macro_all": "F1-macro_all",
             "acc_worst_region": "acc_worst_region", "acc_top5_wg": "acc_top5_wg", "acc_wg": "acc_wg",
             "mean_recall@1": "mean_recall@1", "jaccard_score_10-12": "jaccard_score_10-12"}


def comparisons(rows: pd.DataFrame, peers: dict, keys: list[str]) -> list[tuple[str, str, float, float]]:
    """(task, metric, harness, peer) for every number both give, as fractions."""
    out = []
    for key in keys:
        t, row, peer = datacomp.task(key), rows.loc[f"datacomp:{key}"], peers[key]
        out.append((key, f"main_metric ({t.metric})", row["main_metric"] / 100, float(peer[PEER_MAIN[t.metric]])))
        if t.kind == "wds":
            out.append((key, "acc1", row["top1"] / 100, peer["acc1"]))
            out.append((key, "mean_per_class_recall", row["mean_per_class_recall"] / 100,
                        peer["mean_per_class_recall"]))
            if peer["acc5"] is not None:
                out.append((key, "acc5", row["top5"] / 100, peer["acc5"]))
        elif t.kind == "retrieval":
            for k in (1, 5, 10):
                out.append((key, f"text_retrieval_recall@{k}", row[f"image_to_text_R@{k}"] / 100,
                            peer[f"text_retrieval_recall@{k}"]))
                out.append((key, f"image_retrieval_recall@{k}", row[f"text_to_image_R@{k}"] / 100,
                            peer[f"image_retrieval_recall@{k}"]))
        else:
            out.append((key, "avg_jaccard_score", row["jaccard_all"] / 100, peer["avg_jaccard_score"]))
    return out


def mismatches(rows, peers, keys):
    return [(k, m, h, p) for k, m, h, p in comparisons(rows, peers, keys) if not abs(h - p) <= TOL]


# ------------------------------------------------------------------------------------------------ tests
def test_every_metric_kind_equals_the_peers(world):
    rows, peers = world["rows"], world["peers"]
    bad = mismatches(rows, peers, world["keys"])
    assert bad == [], pd.DataFrame(bad, columns=["task", "metric", "harness", "peer"]).to_string()
    kinds = {datacomp.task(k).metric for k in world["keys"]}
    assert kinds == {"acc1", "mean_per_class_recall", "F1-macro_all", "acc_worst_region", "acc_top5_wg", "acc_wg",
                     "mean_recall@1", "jaccard_score_10-12"}  # every main metric of the 38 tasks
    for key, *_ in CLASSIFICATION:  # each image's label and top-5, in the shards' order
        p = rows.loc[f"datacomp:{key}", predictions.KEY]
        assert p["label"] == peers[key]["label"].tolist(), key
        assert np.array_equal(np.asarray(p["top5"]), peers[key]["top5"]), key
        assert rows.loc[f"datacomp:{key}", "skipped_images"] == 0
        # the equality rests on no near tie: the two pipelines' margins between the two best classes (their logits'
        # round-off, measured image by image) differ by far less than the smallest margin
        drift = np.abs(np.asarray(p["margin"]) - peers[key]["margin"]).max()
        assert drift < peers[key]["margin"].min() / 10, (key, drift, peers[key]["margin"].min())
    # nothing degenerate: the designed hit rates give distinct per-group values and no trivial metric
    values = {k: h for k, m, h, _ in comparisons(rows, peers, world["keys"]) if m.startswith("main_metric")}
    assert all(0 < v < 1 for v in values.values()), values
    for key in (FLICKR, MSCOCO):  # the two directions differ: a metric that took one for the other would show
        assert peers[key]["text_retrieval_recall@1"] != peers[key]["image_retrieval_recall@1"], key


def test_the_aggregates_equal_aggregate_scores_py(world):
    """aggregate_scores.py's get_aggregate_scores (re-expressed: the mean over each group's tasks and over all 38)
    against the suite's aggregate rows, on 38 drawn task scores."""
    rng = np.random.default_rng(3)
    results = {t.name: float(rng.random()) for t in datacomp.TASKS}
    df = pd.DataFrame({"dataset": list(results), "main_metric": list(results.values())}).dropna(
        subset=["main_metric"])
    assert len(df) == 38
    r = dict(zip(df.dataset, df.main_metric))
    theirs = {"ImageNet": r["ImageNet 1k"],
              **{g: np.mean([r[d] for d in names]) for g, names in datacomp.GROUPS.items()},
              "Average": np.mean(list(r.values()))}
    rows = [{"model": "m", "library": "open_clip", "weights": "w", "dataset": f"datacomp:{t.key}", "task": "x",
             "datacomp_task": t.name, "datacomp_metric": t.metric, "main_metric": 100 * results[t.name]}
            for t in datacomp.TASKS]
    agg = zs_eval.datacomp_means(pd.DataFrame(rows)).set_index("dataset")["main_metric"] / 100
    assert {k: agg[f"datacomp: {k}"] for k in theirs} == pytest.approx(theirs, abs=TOL)


def _rerun(world, keys):
    """The harness alone again on `keys`, features computed afresh (a plant in the reader must reach them)."""
    config = {**world["config"], "datasets": [{"name": f"datacomp:{k}", "root": str(world["root"])} for k in keys]}
    return harness_rows(config, Context(device=torch.device("cpu"), cache_dir=world["root"] / "cache",
                                        use_cache=False))


def _union_f1(pred, y):  # macro-F1 over the union of true and predicted classes (scikit-learn's default)
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


_worst_group, _retrieval_recall = task_metrics.worst_group, tasks.retrieval_recall


def _worst_group_top1(top, y, groups):
    return _worst_group(np.asarray(top).reshape(len(y), -1)[:, :1], y, groups)


def _image_to_text_only(*args, **kwargs):
    r = _retrieval_recall(*args, **kwargs)
    return {**r, "text_to_image_R@1": r["image_to_text_R@1"]}


def _regrouped(key, group):
    t = datacomp.TASK[key]
    return {**datacomp.TASK, key: datacomp.Task(t.key, t.name, t.size, t.metric, group=group)}


PLANTS = {  # name: (what is patched, its planted value, the task that must then disagree with its peer)
    "mean per-class recall as plain accuracy": (
        "harness.methods.task_metrics.mean_per_class_recall", lambda pred, y: float(np.mean(pred == y)),
        "vtab/caltech101"),
    "macro-F1 over the union of labels": ("harness.methods.task_metrics.macro_f1", _union_f1, "wilds/iwildcam"),
    "FMoW grouped by year, not region": ("harness.data.datacomp.TASK", _regrouped("wilds/fmow", (1, "year")),
                                         "wilds/fmow"),
    "GeoDE grouped by country, not region": ("harness.data.datacomp.TASK",
                                             _regrouped("fairness/geode", (1, "country")), "fairness/geode"),
    "Dollar Street's worst group on top-1": ("harness.methods.task_metrics.worst_group", _worst_group_top1,
                                             "fairness/dollar_street"),
    "mean recall@1 as image-to-text only": ("harness.tasks.retrieval_recall", _image_to_text_only, FLICKR),
    "WinoGAViL over every instance": ("harness.methods.task_metrics.jaccard_10_12",
                                      lambda scores, candidates: float(np.mean(scores)), "misc/winogavil"),
    "a reader that takes .webp images only (datasets' builder after a .webp first sample)": (
        "harness.data.wds.IMAGE_EXTENSIONS", ("webp",), "vtab/caltech101"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_error_is_caught(world, plant, monkeypatch):
    target, value, wrong = PLANTS[plant]
    monkeypatch.setattr(target, value)
    if target.endswith("IMAGE_EXTENSIONS"):
        with pytest.warns(UserWarning, match="skipped 32 unreadable"):  # its 16 png and 16 jpg samples
            rows = _rerun(world, [wrong])
    else:
        rows = _rerun(world, [wrong])
    assert [k for k, *_ in mismatches(rows, world["peers"], [wrong])], plant


# --------------------------------------------------------------------- the catalog's CLIP_benchmark sets
def test_a_catalog_set_in_the_hubs_layout_equals_clip_benchmark_on_its_webdataset(world, tmp_path):
    """CIFAR-10 and MSCOCO written twice with the same images: in the hub's layout for the harness (uoft-cs/cifar10
    plain_text/test-*.parquet; nlphuji's parquet export TEST/test/) and as a webdataset by CLIP_benchmark's own
    convert_dataset / convert_retrieval_dataset for its wds/ reader; the zero-shot and retrieval rows agree."""
    import datasets
    from clip_benchmark import webdataset_builder as cb_writer

    from harness.data import catalog

    model, transform, tokenizer = _peer_model(world["root"] / "tiny.pt")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    pictures = layouts.images(40, seed=40)
    labels = [int(v) for v in np.random.default_rng(4).integers(0, 10, 40)]
    hub = tmp_path / "cifar10"
    (hub / "plain_text").mkdir(parents=True)
    datasets.Dataset.from_dict({"img": pictures, "label": labels}, features=datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})).to_parquet(
        hub / "plain_text" / "test-00000-of-00001.parquet")
    templates = catalog.templates(catalog.entry("cifar10"))

    class Pairs(list):  # convert_dataset reads .classes and .templates ("{c}") off the data set
        pass

    pairs = Pairs(zip(pictures, labels))
    pairs.classes, pairs.templates = names, [t.replace("{}", "{c}") for t in templates]

    cb_writer.convert_dataset(pairs, "test", str(tmp_path / "wds_cifar10"),
                              transform=cb_writer.PIL_to_bytes("webp"), verbose=False)
    captions = [[f"photo {i}, caption {j}" for j in range(3)] for i in range(12)]
    coco = tmp_path / "mscoco" / "TEST" / "test"
    coco.mkdir(parents=True)
    datasets.Dataset.from_dict({"image": pictures[:12], "caption": captions},
                               features=layouts.RETRIEVAL_FEATURES).to_parquet(coco / "0000.parquet")
    cb_writer.convert_retrieval_dataset(list(zip(pictures[:12], captions)), "test", str(tmp_path / "wds_mscoco"),
                                        transform=cb_writer.PIL_to_bytes("webp"), verbose=False)

    config = {"datasets": [{"name": "cifar10", "root": str(hub)}, {"name": "mscoco", "root": str(tmp_path / "mscoco")}],
              "batch_size": 16, "models": world["config"]["models"]}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    zs_eval.validate(config, ctx)
    rows = pd.DataFrame(zs_eval.run_unit("eval:tiny", config, ctx)).set_index("dataset")

    ds = cb_builder.build_dataset("wds/cifar10", root=str(tmp_path / "wds_cifar10"), transform=transform,
                                  split="test", download=False)
    loader = torch.utils.data.DataLoader(ds.batched(16), batch_size=None, shuffle=False, num_workers=0)
    loader.dataset.classes = ds.classes  # zeroshot_classification.evaluate reads dataloader.dataset.classes
    theirs = zsc.evaluate(model, loader, tokenizer, ds.classes, ds.templates, "cpu", amp=False)
    ours = rows.loc["cifar10"]
    assert ours["top1"] / 100 == pytest.approx(theirs["acc1"], abs=TOL)
    assert ours["top5"] / 100 == pytest.approx(theirs["acc5"], abs=TOL)
    assert ours["mean_per_class_recall"] / 100 == pytest.approx(theirs["mean_per_class_recall"], abs=TOL)
    assert 0 < theirs["acc1"] < 1

    ds = cb_builder.build_dataset("wds/mscoco", root=str(tmp_path / "wds_mscoco"), transform=transform,
                                  split="test", download=False)
    loader = torch.utils.data.DataLoader(ds.batched(8), batch_size=None, shuffle=False, num_workers=0)
    theirs = zsr.evaluate(model, loader, tokenizer, recall_k_list=[1, 5, 10], device="cpu", amp=False)
    ours = rows.loc["mscoco"]
    for k in (1, 5, 10):
        assert ours[f"image_to_text_R@{k}"] / 100 == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=TOL)
        assert ours[f"text_to_image_R@{k}"] / 100 == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=TOL)
    assert 0 < theirs["image_retrieval_recall@5"] < 1


# ------------------------------------------------------------------------- files read as the peer reads them
def test_a_task_is_read_as_datacomps_clip_benchmark_reads_it(tmp_path):
    """A classnames.txt and a templates file with a blank line between entries, and a 16-bit grayscale PNG among the
    images: CLIP_benchmark 1.4.0 (DataComp's pin; its wds reader drops blank lines, webdataset's "pil" decoder
    converts with PIL, clipping 16-bit values at 255) and the harness read the same class names, templates and
    pixels. (1.6's reader would keep the blank line as an empty class: every later class would shift.)"""
    from harness.data import images

    sixteen = Image.fromarray(np.full((20, 30), 50_000, np.uint16))  # 50000/65535: a light grey, 194 of 255
    buf = io.BytesIO()
    sixteen.save(buf, format="png")
    pictures = [buf.getvalue(), *layouts.images(3, seed=5)]
    folder = layouts.write_wds(tmp_path, "vtab/caltech101", pictures, [0, 1, 2, 0], ["cat", "", "dog", "bird"],
                               templates=("a photo of a {c}.", "", "itap of a {c}."), formats=("png",))
    peer = cb_builder.build_dataset(dataset_name="wds/vtab/caltech101", root=str(folder),
                                    transform=lambda im: np.asarray(im), split="test", download=False)
    with pytest.warns(UserWarning, match="tasklist.yml says"):
        ours = datacomp.load("vtab/caltech101", tmp_path)
    assert ours.classnames == peer.classes == ["cat", "dog", "bird"]
    assert ours.templates == [t.replace("{c}", "{}") for t in peer.templates]
    theirs = [np.asarray(x) for x, _ in peer]
    mine = [np.asarray(images.to_pil(ours.dataset[i]["image"], ours.reading)) for i in range(len(ours))]
    assert theirs[0].max() == 255  # the peer clips
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a, b)

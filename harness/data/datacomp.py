"""DataComp's evaluation suite: 38 zero-shot tasks, declared as DataComp declares them, loaded as DataComp publishes
them.

What this follows (mlfoundations/datacomp):
- tasklist.yml: the tasks, their display names, `main_metric` (acc1 where none is given) and tags. FairFace and
  UTKFace are listed there without a main metric and are left out of the average (aggregate_scores.py keeps the
  rows that have one: 38).
- download_evalsets.py: classification tasks are webdatasets on the hub, `djghosh/wds_<task>_test` (the task key
  with "/" as "-", the "fairness/" prefix dropped), each holding classnames.txt,
  zeroshot_classification_templates.txt, test/nshards.txt and test/0.tar ... test/<n-1>.tar; retrieval and
  WinoGAViL are nlphuji's hub data sets (split "test").
- CLIP_benchmark's build_wds_dataset (clip_benchmark/datasets/builder.py): a sample is <key>.webp (or .png, .jpg,
  .jpeg) and <key>.cls (the label as text); the WILDS and fairness tasks add <key>.npy, the sample's metadata row
  (eval_utils/wilds_eval.py, fairness_eval.py: its columns are the evaluator's `_metadata_fields`, in order).
- eval_utils/*.py and aggregate_scores.py: how each main metric is computed and how the average and the group
  means are taken (harness.methods.task_metrics).

A local copy (the data set's `root`) is the folder DataComp's download_evalsets.py fills: root/wds_<task>_test/
for each webdataset task; the nlphuji sets as their parquet export, root/<repository name>/<files> (their hub
repositories are loading scripts, which `datasets` 4 and later no longer run).

    from harness.data import datacomp
    datacomp.task("vtab/caltech101").metric            # "mean_per_class_recall"
    datacomp.load("cifar10", root="/data/datacomp")   # an ImageData: the task's class names and templates
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import catalog, texts
from .catalog import CatalogEntry
from .images import ImageData

SOURCE = "mlfoundations/datacomp tasklist.yml, download_evalsets.py, eval_utils/, aggregate_scores.py"
WDS_OWNER = "djghosh"


@dataclass(frozen=True)
class Task:
    key: str  # DataComp's task key (tasklist.yml): "vtab/caltech101"
    name: str  # its display name: the column of open_clip's results table, aggregate_scores.py's groups
    kind: str = "wds"  # "wds" (a webdataset: zero-shot classification), "retrieval", "winogavil"
    metric: str = "acc1"  # main_metric
    # the metadata (.npy) column a worst-group metric groups by, and its name (the evaluator's _metadata_fields)
    group: tuple[int, str] | None = None

    @property
    def hub_id(self) -> str:
        if self.kind == "wds":
            key = self.key.removeprefix("fairness/")
            return f"{WDS_OWNER}/wds_{key.replace('/', '-')}_test"
        return "nlphuji/" + self.key.split("/", 1)[1]

    @property
    def folder(self) -> str:
        """Its folder in a local copy: DataComp's download layout."""
        return self.hub_id.split("/", 1)[1]


# tasklist.yml, in its order; main_metric where it names one
TASKS: list[Task] = [
    Task("vtab/caltech101", "Caltech-101", metric="mean_per_class_recall"),
    Task("cifar10", "CIFAR-10"),
    Task("vtab/cifar100", "CIFAR-100"),
    Task("vtab/clevr_count_all", "CLEVR Counts"),
    Task("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    Task("country211", "Country211"),
    Task("vtab/dtd", "Describable Textures"),
    Task("vtab/eurosat", "EuroSAT"),
    Task("fgvc_aircraft", "FGVC Aircraft", metric="mean_per_class_recall"),
    Task("food101", "Food-101"),
    Task("gtsrb", "GTSRB"),
    Task("imagenet1k", "ImageNet 1k"),
    Task("imagenet_sketch", "ImageNet Sketch"),
    Task("imagenetv2", "ImageNet v2"),
    Task("imagenet-a", "ImageNet-A"),
    Task("imagenet-o", "ImageNet-O"),
    Task("imagenet-r", "ImageNet-R"),
    Task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    Task("mnist", "MNIST"),
    Task("objectnet", "ObjectNet"),
    Task("vtab/flowers", "Oxford Flowers-102", metric="mean_per_class_recall"),
    Task("vtab/pets", "Oxford-IIIT Pet", metric="mean_per_class_recall"),
    Task("voc2007", "Pascal VOC 2007"),
    Task("vtab/pcam", "PatchCamelyon"),
    Task("renderedsst2", "Rendered SST2"),
    Task("vtab/resisc45", "RESISC45"),
    Task("cars", "Stanford Cars"),
    Task("stl10", "STL-10"),
    Task("sun397", "SUN397"),
    Task("vtab/svhn", "SVHN"),
    Task("retrieval/flickr30k", "Flickr", "retrieval", "mean_recall@1"),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", "retrieval", "mean_recall@1"),
    Task("misc/winogavil", "WinoGAViL", "winogavil", "jaccard_score_10-12"),
    # wilds_eval.py: IWildCamEvaluator (F1, average="macro"), Camelyon17 (acc1), FMoWEvaluator (worst region,
    # _metadata_fields ["region", "year", "y"]). FMoWEvaluator means to skip a region whose name holds "Other", but
    # it sets no metadata map, so its group names read "region:k" and no region is skipped: followed as it runs.
    Task("wilds/iwildcam", "iWildCam", metric="F1-macro_all"),
    Task("wilds/camelyon17", "Camelyon17"),
    Task("wilds/fmow", "FMoW", metric="acc_worst_region", group=(0, "region")),
    # fairness_eval.py: DollarStreetEvaluator (top-5 accuracy by _metadata_fields[0] "income_ds"), GeoDEEvaluator
    # (accuracy by "region")
    Task("fairness/dollar_street", "Dollar Street", metric="acc_top5_wg", group=(0, "income_ds")),
    Task("fairness/geode", "GeoDE", metric="acc_wg", group=(0, "region")),
]
TASK = {t.key: t for t in TASKS}

# aggregate_scores.py: the groups it averages beside ImageNet and the 38-task average
GROUPS: dict[str, tuple[str, ...]] = {
    "ImageNet dist. shifts": ("ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R",
                              "ObjectNet"),
    "VTAB": ("Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Describable Textures", "EuroSAT",
             "KITTI Vehicle Distance", "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45", "SVHN",
             "SUN397"),
    "Retrieval": ("Flickr", "MSCOCO", "WinoGAViL"),
}

# open_clip's results table (docs/openclip_results.csv), the full profile's models: "Average perf. on 38 datasets"
# and each task's main metric, as fractions, in the table's column order (TASKS' order is the same)
PUBLISHED_SOURCE = "open_clip docs/openclip_results.csv (DataComp's evaluation of each model)"
_PUBLISHED_ROWS = {
    "ViT-B-32/openai": (0.5245075360607366, "0.6332,0.8758,0.8983,0.6423,0.2320,0.2335,0.1720,0.4436,0.5044,0.1953,"
                        "0.8400,0.3258,0.4229,0.5592,0.3155,0.4775,0.6933,0.2743,0.4839,0.4431,0.6670,0.8700,0.7640,"
                        "0.6224,0.5865,0.5362,0.5963,0.9713,0.6248,0.3159,0.6884,0.4028,0.4125,0.0732,0.6061,0.1676,"
                        "0.5386,0.8217"),
    "ViT-B-32/laion2b_s34b_b79k": (0.5693607793703361, "0.6656,0.9105,0.9358,0.7555,0.1535,0.2451,0.1667,0.5569,"
                                   "0.4806,0.2453,0.8269,0.4933,0.5366,0.5814,0.2627,0.4995,0.7643,0.2630,0.6996,"
                                   "0.4883,0.7024,0.9076,0.7910,0.5993,0.5728,0.6106,0.8607,0.9656,0.6872,0.4257,"
                                   "0.7544,0.4783,0.4479,0.0930,0.6392,0.1479,0.5666,0.8543"),
    "ViT-B-16/openai": (0.5626067910505228, "0.6834,0.8901,0.9077,0.6695,0.2123,0.2231,0.2282,0.4495,0.5594,0.2421,"
                        "0.8872,0.4339,0.4824,0.6188,0.4995,0.4230,0.7770,0.2644,0.5135,0.5531,0.6907,0.8886,0.7831,"
                        "0.5072,0.6068,0.5822,0.6477,0.9825,0.6435,0.5190,0.7218,0.4275,0.4316,0.1099,0.6808,0.1888,"
                        "0.5876,0.8614"),
    "ViT-L-14/openai": (0.6173485603242465, "0.7554,0.9249,0.9559,0.7582,0.1943,0.2021,0.3187,0.5537,0.6263,0.3181,"
                        "0.9305,0.5055,0.5959,0.6983,0.7075,0.3235,0.8784,0.2180,0.7634,0.6889,0.7923,0.9323,0.7828,"
                        "0.5204,0.6881,0.6337,0.7788,0.9936,0.6756,0.5840,0.7508,0.4642,0.4136,0.1211,0.6741,0.2229,"
                        "0.6297,0.8839"),
}
# the table's columns after the average: ImageNet 1k first, then the others in the table's order
_TABLE_ORDER = ["ImageNet 1k", "Caltech-101", "CIFAR-10", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Country211",
                "Describable Textures", "EuroSAT", "FGVC Aircraft", "Food-101", "GTSRB", "ImageNet Sketch",
                "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "KITTI Vehicle Distance", "MNIST",
                "ObjectNet", "Oxford Flowers-102", "Oxford-IIIT Pet", "Pascal VOC 2007", "PatchCamelyon",
                "Rendered SST2", "RESISC45", "Stanford Cars", "STL-10", "SUN397", "SVHN", "Flickr", "MSCOCO",
                "WinoGAViL", "iWildCam", "Camelyon17", "FMoW", "Dollar Street", "GeoDE"]
PUBLISHED: dict[str, dict[str, float]] = {
    model: {"Average": average, **dict(zip(_TABLE_ORDER, map(float, values.split(","))))}
    for model, (average, values) in _PUBLISHED_ROWS.items()}


def task(key: str) -> Task:
    from ..infra.suite import ConfigError

    if key not in TASK:
        import difflib

        close = difflib.get_close_matches(key, list(TASK), n=3, cutoff=0.5)
        raise ConfigError(f"unknown DataComp task {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + ": the keys are tasklist.yml's (cifar10, vtab/caltech101, wilds/fmow, ...)")
    return TASK[key]


# --------------------------------------------------------------------------------------------- webdatasets
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's build_wds_dataset reads these


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _local_wds(t: Task, root: Path) -> tuple[list[str], Path]:
    from ..infra.suite import ConfigError

    folder = root / t.folder
    nshards = folder / "test" / "nshards.txt"
    expected = (f"expected DataComp's layout of {t.hub_id}: {folder}/classnames.txt, "
                f"{folder}/zeroshot_classification_templates.txt, {folder}/test/nshards.txt and "
                f"{folder}/test/0.tar ... (python download_evalsets.py {root}, or a copy of the hub repository)")
    if not nshards.is_file():
        raise ConfigError(f"{t.key}: no {nshards}; {expected}")
    n = int(nshards.read_text().strip())
    tars = [folder / "test" / f"{i}.tar" for i in range(n)]
    missing = [p for p in tars if not p.is_file()] + [folder / f for f in ("classnames.txt",
                                                                           "zeroshot_classification_templates.txt")
                                                      if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{t.key}: {missing[0]} is missing ({len(missing)} file(s) in all); {expected}")
    return [str(p) for p in tars], folder


def _hub_wds(t: Task) -> tuple[object, list[str], list[str]]:
    import datasets
    from huggingface_hub import hf_hub_download

    try:
        texts = [Path(hf_hub_download(t.hub_id, f, repo_type="dataset")).read_text(encoding="utf-8")
                 for f in ("classnames.txt", "zeroshot_classification_templates.txt")]
        ds = datasets.load_dataset(t.hub_id, data_files={"test": "test/*.tar"}, split="test")
    except Exception as e:
        raise FileNotFoundError(
            f"DataComp task {t.key} is not available: it is read from the Hugging Face cache ({t.hub_id}, main: "
            "classnames.txt, zeroshot_classification_templates.txt, test/*.tar; run once online with "
            "HF_DATASETS_OFFLINE=0 and HF_HUB_OFFLINE=0 to fill it), or from a local copy (the data set's root: "
            f"root/{t.folder}/ as DataComp's download_evalsets.py writes it). Cause: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return ds, _lines(texts[0]), _lines(texts[1])


def load(key: str, root: str | os.PathLike | None = None) -> ImageData:
    """A webdataset task's test split as an ImageData: "image", "label" and, for the WILDS and fairness tasks,
    "metadata" (the .npy row), with the task's own class names and templates."""
    import datasets

    t = task(key)
    if t.kind != "wds":
        raise ValueError(f"{key} is a {t.kind} task, not zero-shot classification")
    if root is not None:
        tars, folder = _local_wds(t, Path(root))
        ds = datasets.load_dataset("webdataset", data_files={"test": tars}, split="test")
        names = _lines((folder / "classnames.txt").read_text(encoding="utf-8"))
        templates = _lines((folder / "zeroshot_classification_templates.txt").read_text(encoding="utf-8"))
        fingerprint = catalog._fingerprint(folder)
    else:
        ds, names, templates = _hub_wds(t)
        fingerprint = ds._fingerprint
    image = [c for c in ds.column_names if c in IMAGE_EXTENSIONS]
    if len(image) != 1 or "cls" not in ds.column_names:
        raise ValueError(f"{key}: a sample should hold one image (.{', .'.join(IMAGE_EXTENSIONS)}) and a label "
                         f"(.cls); the shards hold {', '.join(c for c in ds.column_names if not c.startswith('__'))}")
    keep = [image[0], "cls"] + (["npy"] if t.group else [])
    if t.group and "npy" not in ds.column_names:
        raise ValueError(f"{key}: its metric ({t.metric}) groups by the sample's metadata (.npy), which the shards "
                         "do not hold")
    ds = ds.select_columns(keep).rename_columns({image[0]: "image", "cls": "label",
                                                 **({"npy": "metadata"} if t.group else {})})
    top = max(ds["label"]) if len(ds) else -1
    if top >= len(names):
        raise ValueError(f"{key}: label {top} in the shards, but classnames.txt names {len(names)} classes")
    ds = ds.cast_column("label", datasets.ClassLabel(names=[f"{i}" for i in range(len(names))]))
    # the files' templates say "{c}" (CLIP_benchmark's): read as "{}" like every other template source
    return ImageData(f"datacomp:{key}", "test", ds, names, fingerprint, texts.templates(templates, key))


# ------------------------------------------------------------------------------------ nlphuji's hub sets
def retrieval_entry(key: str) -> CatalogEntry:
    """Flickr30k and MSCOCO as DataComp evaluates them (eval_utils/retr_eval.py): every row of split "test"
    (Flickr30k: all of them, not only the Karpathy test rows), every caption of each image."""
    task(key)
    base = catalog.CATALOG["flickr30k" if "flickr" in key else "mscoco"]
    return CatalogEntry(f"datacomp:{key}", base.hub_id, base.splits, base.files, base.source, base.revision,
                        image_column=base.image_column, task="retrieval", captions_column=base.captions_column)


# WinoGAViL: eval_utils/wino_eval.py reads columns candidate_images (a list of images), cue (a string), candidates
# and associations (lists of image names); nlphuji/winogavil is a loading script, read from its parquet export
# (its config folder not checked here: any <config>/test/ is taken)
WINOGAVIL = CatalogEntry("datacomp:misc/winogavil", "nlphuji/winogavil", {"test": "test"},
                         {"test": "*/test/*.parquet"},
                         "mlfoundations/datacomp eval_utils/wino_eval.py (columns candidate_images, cue, candidates, "
                         "associations; split test)", revision="refs/convert/parquet", task="winogavil")


def load_winogavil(root: str | os.PathLike | None = None):
    """WinoGAViL's test split: a datasets.Dataset with candidate_images, cue, candidates, associations."""
    ds, _ = catalog._hub_or_local(WINOGAVIL, "test", local_root("misc/winogavil", root))
    missing = [c for c in ("candidate_images", "cue", "candidates", "associations") if c not in ds.column_names]
    if missing:
        raise ValueError(f"WinoGAViL: no column {', '.join(missing)} (it has {', '.join(ds.column_names)}); "
                         f"{WINOGAVIL.source}")
    return ds


def local_root(key: str, root: str | os.PathLike | None) -> Path | None:
    """Where a retrieval or WinoGAViL task's local copy is: root/<repository name>."""
    return None if root is None else Path(root) / task(key).folder

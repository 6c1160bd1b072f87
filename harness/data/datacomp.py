"""DataComp's evaluation suite: 38 zero-shot tasks, declared as DataComp declares them, found where DataComp's
download puts them, read as DataComp's evaluation reads them.

What this follows (mlfoundations/datacomp at 4a8df19, its HEAD when this was written):
- tasklist.yml: each task's key, display name, size (the number of test examples), main_metric (acc1 where none is
  given). FairFace and UTKFace are listed there without a main metric and are left out of the average
  (aggregate_scores.py keeps the rows that have one: 38). tests/data/datacomp_tasklist.yml is a verbatim copy, and
  tests/test_datacomp.py checks TASKS against it.
- download_evalsets.py: a classification task is the webdataset djghosh/wds_<task>_test (the key with "/" as "-", the
  "fairness/" prefix dropped), downloaded to <data_dir>/wds_<task>_test/ {classnames.txt,
  zeroshot_classification_templates.txt, test/nshards.txt, test/0.tar ...}; a retrieval/ or misc/ task is nlphuji's
  hub data set nlphuji/<name>, fetched with `datasets.load_dataset("nlphuji/<name>", split="test",
  cache_dir=<data_dir>/hf_cache)` — so it lies in datasets' cache layout,
  <data_dir>/hf_cache/nlphuji___<name>/<config>/<version>/<hash>/<name>-test*.arrow.
- eval_utils/wds_eval.py, retr_eval.py, wino_eval.py, wilds_eval.py, fairness_eval.py: how a sample is read
  (CLIP_benchmark's build_wds_dataset: harness.data.wds), which columns the nlphuji sets must hold (retrieval: image,
  caption; WinoGAViL: candidate_images, cue, candidates, associations), how each main metric is computed
  (harness.methods.task_metrics), and the metadata column each worst-group metric groups by.
- aggregate_scores.py: the group means and the 38-task average.

    from harness.data import datacomp
    datacomp.task("vtab/caltech101").metric            # "mean_per_class_recall"
    datacomp.load("cifar10", root="/data/datacomp")   # an ImageData: the task's class names and templates
    datacomp.check(["cifar10", "misc/winogavil"], "/data/datacomp")   # every task's files, before any work
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import catalog, texts, wds
from .images import ImageData, load_local
from .source import Source

SOURCE = "mlfoundations/datacomp tasklist.yml, download_evalsets.py, eval_utils/, aggregate_scores.py"
WDS_OWNER = "djghosh"
DOWNLOAD = "python download_evalsets.py {root} (mlfoundations/datacomp)"


@dataclass(frozen=True)
class Task:
    key: str  # DataComp's task key (tasklist.yml): "vtab/caltech101"
    name: str  # its display name: the column of open_clip's results table, aggregate_scores.py's groups
    size: int  # tasklist.yml's size: its number of test examples
    metric: str = "acc1"  # main_metric
    # the metadata (.npy) column a worst-group metric groups by, and its name (the evaluator's _metadata_fields)
    group: tuple[int, str] | None = None

    @property
    def kind(self) -> str:
        """"wds" (a webdataset: zero-shot classification), "retrieval" or "winogavil" — as eval_utils/main.py
        branches on the key."""
        if self.key.startswith("retrieval/"):
            return "retrieval"
        return "winogavil" if self.key == "misc/winogavil" else "wds"

    @property
    def hub_id(self) -> str:
        if self.kind == "wds":
            key = self.key.removeprefix("fairness/")
            return f"{WDS_OWNER}/wds_{key.replace('/', '-')}_test"
        return "nlphuji/" + self.key.split("/", 1)[1]

    @property
    def folder(self) -> str:
        """Its folder in DataComp's download (a webdataset task), or its repository's name (an nlphuji set)."""
        return self.hub_id.split("/", 1)[1]

    @property
    def source(self) -> str:
        """Where the task is published and which of DataComp's files read it."""
        if self.kind == "wds":
            return (f"huggingface.co/datasets/{self.hub_id}: classnames.txt, zeroshot_classification_templates.txt, "
                    "test/nshards.txt, test/<i>.tar (mlfoundations/datacomp download_evalsets.py, "
                    "eval_utils/wds_eval.py)")
        reader = "retr_eval.py" if self.kind == "retrieval" else "wino_eval.py"
        return (f"huggingface.co/datasets/{self.hub_id}, split test: datasets.load_dataset({self.hub_id!r}, "
                f"split='test', cache_dir=<data_dir>/hf_cache) (mlfoundations/datacomp download_evalsets.py, "
                f"eval_utils/{reader})")


# tasklist.yml, in its order (key, name, size, main_metric where it names one)
TASKS: list[Task] = [
    Task("vtab/caltech101", "Caltech-101", 6085, "mean_per_class_recall"),
    Task("cifar10", "CIFAR-10", 10000),
    Task("vtab/cifar100", "CIFAR-100", 10000),
    Task("vtab/clevr_count_all", "CLEVR Counts", 15000),
    Task("vtab/clevr_closest_object_distance", "CLEVR Distance", 15000),
    Task("country211", "Country211", 21100),
    Task("vtab/dtd", "Describable Textures", 1880),
    Task("vtab/eurosat", "EuroSAT", 5400),
    Task("fgvc_aircraft", "FGVC Aircraft", 3333, "mean_per_class_recall"),
    Task("food101", "Food-101", 25250),
    Task("gtsrb", "GTSRB", 12630),
    Task("imagenet1k", "ImageNet 1k", 50000),
    Task("imagenet_sketch", "ImageNet Sketch", 50889),
    Task("imagenetv2", "ImageNet v2", 10000),
    Task("imagenet-a", "ImageNet-A", 7500),
    Task("imagenet-o", "ImageNet-O", 2000),
    Task("imagenet-r", "ImageNet-R", 30000),
    Task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", 711),
    Task("mnist", "MNIST", 10000),
    Task("objectnet", "ObjectNet", 18574),
    Task("vtab/flowers", "Oxford Flowers-102", 6149, "mean_per_class_recall"),
    Task("vtab/pets", "Oxford-IIIT Pet", 3669, "mean_per_class_recall"),
    Task("voc2007", "Pascal VOC 2007", 14976),
    Task("vtab/pcam", "PatchCamelyon", 32768),
    Task("renderedsst2", "Rendered SST2", 1821),
    Task("vtab/resisc45", "RESISC45", 6300),
    Task("cars", "Stanford Cars", 8041),
    Task("stl10", "STL-10", 8000),
    Task("sun397", "SUN397", 108754),
    Task("vtab/svhn", "SVHN", 26032),
    # Flickr's 1,000-image test set (Karpathy's split), renamed from retrieval/flickr30k in DataComp's commit
    # 50f09fe "Update with correct Flickr30k test set"
    Task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", 1000, "mean_recall@1"),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", 5000, "mean_recall@1"),
    Task("misc/winogavil", "WinoGAViL", 3563, "jaccard_score_10-12"),
    # wilds_eval.py: IWildCamEvaluator (F1, average="macro"), Camelyon17 (acc1), FMoWEvaluator (worst region,
    # _metadata_fields ["region", "year", "y"]). FMoWEvaluator means to skip a region whose name holds "Other", but
    # it sets no metadata map, so its group names read "region:k" and no region is skipped: followed as it runs.
    Task("wilds/iwildcam", "iWildCam", 42791, "F1-macro_all"),
    Task("wilds/camelyon17", "Camelyon17", 85054),
    Task("wilds/fmow", "FMoW", 22108, "acc_worst_region", group=(0, "region")),
    # fairness_eval.py: DollarStreetEvaluator (top-5 accuracy by _metadata_fields[0] "income_ds"), GeoDEEvaluator
    # (accuracy by _metadata_fields[0] "region")
    Task("fairness/dollar_street", "Dollar Street", 3503, "acc_top5_wg", group=(0, "income_ds")),
    Task("fairness/geode", "GeoDE", 12488, "acc_wg", group=(0, "region")),
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

# open_clip's results table, docs/openclip_results.csv (mlfoundations/open_clip at 89fb801): its header and the rows
# of the full profile's models, copied line for line into published/openclip_results.csv (grep of those lines, no
# edit). "Average perf. on 38 datasets" is DataComp's Average; the table publishes no group means (ImageNet 1k is a
# column of its own).
PUBLISHED_SOURCE = "open_clip docs/openclip_results.csv (DataComp's evaluation of each model)"
PUBLISHED_FILE = Path(__file__).parent / "published" / "openclip_results.csv"
AVERAGE_COLUMN = "Average perf. on 38 datasets"


def _published() -> dict[str, dict[str, float]]:
    """"ARCH/TAG" -> {"Average": ..., task name: main metric} as fractions, from the table's own strings."""
    out = {}
    for row in csv.DictReader(io.StringIO(PUBLISHED_FILE.read_text(encoding="utf-8"))):
        values = {"Average": float(row[AVERAGE_COLUMN])}
        values.update({t.name: float(row[t.name]) for t in TASKS})
        out[f"{row['name']}/{row['pretrained']}"] = values
    return out


PUBLISHED: dict[str, dict[str, float]] = _published()


def task(key: str) -> Task:
    from ..infra.suite import ConfigError

    if key not in TASK:
        import difflib

        close = difflib.get_close_matches(key, list(TASK), n=3, cutoff=0.5)
        raise ConfigError(f"unknown DataComp task {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + ": the keys are tasklist.yml's (cifar10, vtab/caltech101, wilds/fmow, ...)")
    return TASK[key]


# ------------------------------------------------------------------------------------------ where the files lie
def _lines(text: str) -> list[str]:
    """A task's classnames.txt or templates file as the peer whose code DataComp's numbers come from reads it:
    CLIP_benchmark 1.4.0 (DataComp's requirements.txt pin), builder.build_wds_dataset: every line stripped, blank
    lines dropped (1.6's reader keeps them as empty entries; tests/test_datacomp_parity.py runs 1.4.0's)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _wds_missing(t: Task, root: Path) -> list[Path]:
    """The files of a webdataset task's download that are not under root/wds_<task>_test/."""
    folder = root / t.folder
    nshards = folder / "test" / "nshards.txt"
    if not nshards.is_file():
        return [nshards]
    n = int(nshards.read_text().strip())
    wanted = [folder / "classnames.txt", folder / "zeroshot_classification_templates.txt"] + [
        folder / "test" / f"{i}.tar" for i in range(n)]
    return [p for p in wanted if not p.is_file()]


def _arrow_files(cache_dir: Path, t: Task) -> list[Path]:
    """The split-test Arrow files `datasets` wrote for nlphuji/<name> into cache_dir — its layout
    <cache_dir>/nlphuji___<name>/<config>/<version>/<hash>/<name>-test[-NNNNN-of-NNNNN].arrow with dataset_info.json
    beside them — from the newest such folder (as datasets' packaged_modules/cache picks one)."""
    name = t.folder
    folders = [p.parent for p in (cache_dir / f"nlphuji___{name}").glob("*/*/*/dataset_info.json")]
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True):
        files = sorted(folder.glob(f"{name}-test.arrow")) + sorted(folder.glob(f"{name}-test-*-of-*.arrow"))
        if files:
            return files
    return []


def _parquet_files(root: Path, t: Task) -> list[Path]:
    """The repository's parquet export (refs/convert/parquet) under root/<name>/: <config>/test/*.parquet (the config
    folder is not fixed here: the export names it after the loading script's config)."""
    return sorted((root / t.folder).glob("*/test/*.parquet"))


def _default_cache_files(t: Task) -> list[Path]:
    """Without a root: what `datasets.load_dataset("nlphuji/<name>", split="test")` left in datasets' own cache."""
    import datasets

    return _arrow_files(Path(datasets.config.HF_DATASETS_CACHE), t)


def _hub_cached(repo: str) -> bool:
    """Whether the Hugging Face hub cache holds any snapshot of the data-set repository `repo`."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}" / "snapshots").is_dir()


def missing(t: Task, root: str | os.PathLike | None) -> str | None:
    """What of the task is not where DataComp's download (root) or the caches (no root) put it; None if all is."""
    if root is not None:
        root = Path(root)
        if t.kind == "wds":
            lost = _wds_missing(t, root)
            return f"{lost[0]}" + (f" and {len(lost) - 1} more file(s)" if len(lost) > 1 else "") if lost else None
        if _arrow_files(root / "hf_cache", t) or _parquet_files(root, t):
            return None
        return f"{root}/hf_cache/nlphuji___{t.folder}/ (or a parquet export {root}/{t.folder}/<config>/test/)"
    if t.kind == "wds":
        return None if _hub_cached(t.hub_id) else f"the hub cache's {t.hub_id}"
    if _default_cache_files(t) or _hub_cached(t.hub_id):
        return None
    return f"datasets' cache of {t.hub_id} (or the hub cache's parquet export)"


def check(keys: list[str], root: str | os.PathLike | None) -> None:
    """Before any work: every task's files where they should be; one ConfigError naming each missing task and the
    command that fetches it otherwise."""
    from ..infra.suite import ConfigError

    if root is not None and not Path(root).is_dir():
        raise ConfigError(f"DataComp's data_dir {root} does not exist: fetch the tasks with "
                          f"{DOWNLOAD.format(root=root)}")
    lost = [(k, m) for k in keys if (m := missing(task(k), root)) is not None]
    if not lost:
        return
    fetch = DOWNLOAD.format(root=root) if root is not None else (
        "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 once online, or DataComp's download_evalsets.py into a folder given "
        "as the data set's root")
    named = "; ".join(f"{k}: no {m}" for k, m in lost[:5]) + (f"; and {len(lost) - 5} more" if len(lost) > 5 else "")
    raise ConfigError(f"{len(lost)} of {len(keys)} DataComp task(s) not found ({named}): fetch them with {fetch}")


# --------------------------------------------------------------------------------------------- webdatasets
def _read_shards(t: Task, tars: list[Path]):
    """Every sample of the shards as a datasets.Dataset: image (a reference into its shard, harness.data.wds),
    label (the .cls, as webdataset decodes it: int) and, for a worst-group task, metadata (the .npy row)."""
    import datasets
    import numpy as np

    images, labels, metadata = [], [], []
    for shard in tars:
        for sample in wds.samples(shard, ("cls", "npy")):
            if sample.get("cls") is None:
                raise ValueError(f"{t.key}: sample {sample['__key__']} of {shard} has no .cls label")
            images.append(wds.image_cell(shard, sample))
            labels.append(int(sample["cls"]))
            if t.group:
                if sample.get("npy") is None:
                    raise ValueError(f"{t.key}: its metric ({t.metric}) groups by each sample's metadata (.npy), "
                                     f"which sample {sample['__key__']} of {shard} does not hold")
                metadata.append(np.load(io.BytesIO(sample["npy"])).tolist())
    columns = {"image": images, "label": labels, **({"metadata": metadata} if t.group else {})}
    return datasets.Dataset.from_dict(columns)


def load(key: str, root: str | os.PathLike | None = None) -> ImageData:
    """A webdataset task's test split as an ImageData: "image", "label" and, for the WILDS and fairness tasks,
    "metadata" (the .npy row), with the task's own class names and templates."""
    import datasets

    t = task(key)
    if t.kind != "wds":
        raise ValueError(f"{key} is a {t.kind} task, not zero-shot classification")
    if root is not None:
        check([key], root)
        folder = Path(root) / t.folder
    else:
        folder = _hub_snapshot(t)
    n = int((folder / "test" / "nshards.txt").read_text().strip())
    ds = _read_shards(t, [folder / "test" / f"{i}.tar" for i in range(n)])
    names = _lines((folder / "classnames.txt").read_text(encoding="utf-8"))
    templates = _lines((folder / "zeroshot_classification_templates.txt").read_text(encoding="utf-8"))
    top = max(ds["label"]) if len(ds) else -1
    if top >= len(names):
        raise ValueError(f"{key}: label {top} in the shards, but classnames.txt names {len(names)} classes")
    _check_size(t, len(ds))
    ds = ds.cast_column("label", datasets.ClassLabel(names=[f"{i}" for i in range(len(names))]))
    # the files' templates say "{c}" (CLIP_benchmark's): read as "{}" like every other template source
    fingerprint, sources = catalog.local_fingerprint(folder)
    return ImageData(f"datacomp:{key}", "test", ds, names, fingerprint, texts.templates(templates, key),
                     sources=sources)


def _hub_snapshot(t: Task) -> Path:
    """A webdataset task's files from the Hugging Face hub cache (downloaded when online)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(t.hub_id, repo_type="dataset"))
    except Exception as e:
        raise FileNotFoundError(
            f"DataComp task {t.key} is not available: it is read from the Hugging Face cache ({t.hub_id}, main: "
            "classnames.txt, zeroshot_classification_templates.txt, test/*.tar; run once online with "
            "HF_DATASETS_OFFLINE=0 and HF_HUB_OFFLINE=0 to fill it), or from DataComp's download (the data set's "
            f"root: root/{t.folder}/ as download_evalsets.py writes it). Cause: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}") from e


def _check_size(t: Task, n: int) -> None:
    if n != t.size:
        warnings.warn(f"DataComp task {t.key}: {n} test examples read, tasklist.yml says {t.size} (a partial copy, "
                      "or another version of the data set: its numbers are not comparable with DataComp's)",
                      stacklevel=3)


# ------------------------------------------------------------------------------------ nlphuji's hub sets
NLPHUJI_COLUMNS = {"retrieval": ("image", "caption"),  # eval_utils/retr_eval.py
                   "winogavil": ("candidate_images", "cue", "candidates", "associations")}  # eval_utils/wino_eval.py


def load_nlphuji(key: str, root: str | os.PathLike | None = None):
    """A retrieval or WinoGAViL task's split test as a datasets.Dataset, and (fingerprint, sources) of its files
    (None: datasets' own, from the hub): from where
    DataComp's download puts it (root/hf_cache, in datasets' cache layout) or a parquet export under root; without
    a root, from datasets' own cache or the hub's parquet export."""
    import datasets

    t = task(key)
    if t.kind == "wds":
        raise ValueError(f"{key} is a webdataset task: use load")
    files = []
    if root is not None:
        check([key], root)
        files = _arrow_files(Path(root) / "hf_cache", t) or _parquet_files(Path(root), t)
    else:
        files = _default_cache_files(t)
    if files and files[0].suffix == ".arrow":
        ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    elif files:
        ds = load_local("parquet", data_files={"test": [str(f) for f in files]}, split="test")
    else:
        try:
            ds = datasets.load_dataset(t.hub_id, revision="refs/convert/parquet",
                                       data_files={"test": "*/test/*.parquet"}, split="test")
        except Exception as e:
            raise FileNotFoundError(
                f"DataComp task {t.key} is not available: it is read from datasets' cache (as "
                f"datasets.load_dataset({t.hub_id!r}, split='test') leaves it), the hub's parquet export of "
                f"{t.hub_id} (refs/convert/parquet; run once online with HF_DATASETS_OFFLINE=0 and HF_HUB_OFFLINE=0), "
                f"or DataComp's download (the data set's root: root/hf_cache/). Cause: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}") from e
    lost = [c for c in NLPHUJI_COLUMNS[t.kind] if c not in ds.column_names]
    if lost:
        raise ValueError(f"{key}: no column {', '.join(lost)} (it has {', '.join(ds.column_names)}); {t.source}")
    _check_size(t, len(ds))
    return ds, catalog.local_fingerprint(files[0].parent) if files else None


def load_retrieval(key: str, root: str | os.PathLike | None = None) -> catalog.RetrievalData:
    """Flickr's 1k test set or MSCOCO's 5k as DataComp evaluates them (eval_utils/retr_eval.py): every row of split
    test, every caption of each image."""
    ds, fingerprint = load_nlphuji(key, root)
    return catalog.retrieval_data(f"datacomp:{key}", ds, "image", "caption", fingerprint)


def load_winogavil(root: str | os.PathLike | None = None):
    """WinoGAViL's test split: a datasets.Dataset with candidate_images, cue, candidates, associations."""
    return load_nlphuji("misc/winogavil", root)[0]


def _load(spec, role, names) -> ImageData:
    from ..infra.suite import ConfigError

    if role != "test":
        raise ConfigError(f"{spec.name}: DataComp's tasks have a test split only")
    return load(spec.path, spec.root)


SOURCE = Source(_load, lambda spec, roles: check([spec.path], spec.root),
                task=lambda spec: {"wds": "classification"}.get(task(spec.path).kind, task(spec.path).kind),
                templates=lambda spec: None, load_retrieval=lambda spec: load_retrieval(spec.path, spec.root),
                prefixed=True, check_name=task)

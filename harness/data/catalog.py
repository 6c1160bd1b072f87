"""The data sets users of LAION's CLIP_benchmark evaluate on, declared as data, one entry each, loaded through
Hugging Face `datasets`.

Each entry says where the data set is published (a hub repository, its revision and the files of each split
as the hub serves them: `files`, globs relative to the repository's root), where that layout was checked
(`source`: the dataset card or loader file, by repository and path), its image and label columns, its class names
(the CLIP paper's where they differ from the data set's own; `rename` mends a hub name that is wrong), the
zero-shot templates the CLIP paper published for it (OpenAI CLIP, data/prompts.md; CLIP_benchmark uses the same),
and, where open_clip's results table (docs/openclip_results.csv) has it, the published zero-shot score of the
models the full profiles name. Retrieval sets (Flickr30k, MSCOCO) hold an image and its captions.

    from harness import data
    data.load("cifar10", "test")                                       # an ImageData (harness.data: the registry)
    data.load({"name": "cifar10", "root": "/data/cifar10"}, "test")    # a local copy
    data.catalog.CATALOG["cifar10"].templates

Where the data come from:
- the hub: `datasets.load_dataset(hub_id, revision=revision, data_files={split: files[split]})`, read from the
  Hugging Face cache (fill it once online with HF_DATASETS_OFFLINE=0). Naming the files asks for no loading script:
  nlphuji's Flickr30k and MSCOCO are loading-script repositories, which `datasets` 4 and later refuse, so they are
  read from the hub's parquet export (revision refs/convert/parquet).
- a local copy (`root`): the same files under root, as a `git clone` or `huggingface-cli download` of the revision
  leaves them (root/<files[split]>), or an ImageFolder (root/<split>/<class>/<image>). Anything else is refused,
  naming both layouts.

No hub is reachable here: the loaders are tested on small copies written in each published layout by
tests/test_catalog.py, from the published files, columns and class-name strings, independently of these entries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import ImageData, load_local
from .source import Source

# Fashion-MNIST's class names as the README in Debian's dataset-fashion-mnist gives them (the hub's copy spaces them
# "T - shirt / top": the same classes, harness.data.fashion_mnist.same_names); harness.data.fashion_mnist reads them
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
OPENAI_SOURCE = "open_clip results table (docs/openclip_results.csv)"

_PHOTO = ["a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
          "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
          "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
          "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
          "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
          "a photo of the small {}.", "a photo of the big {}."]  # the CLIP paper's CIFAR templates


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hub_id: str  # where the hub publishes it (read from the Hugging Face cache; HF_DATASETS_OFFLINE=0 fills it)
    splits: dict[str, str]  # role ("train", "test") -> the data set's split name
    files: dict[str, str]  # split name -> glob of its files, relative to the repository's root, as the hub serves them
    source: str  # where the layout (files, columns, class names) was checked: repository and path
    revision: str | None = None  # the hub revision holding `files` (None: the default branch)
    image_column: str = "image"
    label_column: str = "label"
    classnames: tuple[str, ...] | None = None  # None: the data set's own ClassLabel names, "_" read as " "
    rename: dict[str, str] = field(default_factory=dict)  # a class name as published -> as it should read
    templates: tuple[str, ...] = ("a photo of a {}.",)
    task: str = "classification"  # or "retrieval": captions_column holds each image's captions
    captions_column: str | None = None
    filter: tuple[str, str] | None = None  # (column, value): rows of a split kept (Flickr30k's Karpathy split)
    # published zero-shot top-1 (retrieval: the mean of image and text recall@1), % — "MODEL/pretrained tag" -> value
    published: dict[str, float] = field(default_factory=dict)


def _parquet(folder: str, splits=("train", "test")) -> dict[str, str]:
    """The hub's parquet layout: <folder>/<split>-NNNNN-of-NNNNN.parquet."""
    return {split: f"{folder}/{split}-*.parquet" for split in splits}


def _pub(b32_openai, b32_laion, b16_openai, l14_openai) -> dict[str, float]:
    return {"ViT-B-32/openai": b32_openai, "ViT-B-32/laion2b_s34b_b79k": b32_laion, "ViT-B-16/openai": b16_openai,
            "ViT-L-14/openai": l14_openai}


CATALOG: dict[str, CatalogEntry] = {s.name: s for s in [
    CatalogEntry("cifar10", "uoft-cs/cifar10", {"train": "train", "test": "test"}, _parquet("plain_text"),
             "uoft-cs/cifar10 README.md (configs: plain_text/{train,test}-*; features img, label)",
             image_column="img",
             templates=tuple(_PHOTO), published=_pub(89.83, 93.58, 90.77, 95.59)),
    CatalogEntry("cifar100", "uoft-cs/cifar100", {"train": "train", "test": "test"}, _parquet("cifar100"),
             "uoft-cs/cifar100 README.md (configs: cifar100/{train,test}-*; features img, fine_label, coarse_label; "
             "fine_label name 26 is 'cra')", image_column="img", label_column="fine_label", rename={"cra": "crab"},
             templates=tuple(_PHOTO), published=_pub(64.23, 75.55, 66.95, 75.82)),
    CatalogEntry("food101", "ethz/food101", {"train": "train", "test": "validation"},
             _parquet("data", ("train", "validation")),
             "ethz/food101 README.md (data/{train,validation}-*; features image, label: 101 names)",
             templates=("a photo of {}, a type of food.",), published=_pub(84.00, 82.69, 88.72, 93.05)),
    CatalogEntry("pets", "timm/oxford-iiit-pet", {"train": "train", "test": "test"}, _parquet("data"),
             "timm/oxford-iiit-pet README.md (data/{train,test}-*; features image, label)",
             classnames=("Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle",
                         "Bengal", "Birman", "Bombay", "Boxer", "British Shorthair", "Chihuahua", "Egyptian Mau",
                         "English Cocker Spaniel", "English Setter", "German Shorthaired", "Great Pyrenees",
                         "Havanese", "Japanese Chin", "Keeshond", "Leonberger", "Maine Coon", "Miniature Pinscher",
                         "Newfoundland", "Persian", "Pomeranian", "Pug", "Ragdoll", "Russian Blue", "Saint Bernard",
                         "Samoyed", "Scottish Terrier", "Shiba Inu", "Siamese", "Sphynx",
                         "Staffordshire Bull Terrier", "Wheaten Terrier", "Yorkshire Terrier"),
             templates=("a photo of a {}, a type of pet.",), published=_pub(87.00, 90.76, 88.86, 93.23)),
    CatalogEntry("flowers102", "dpdl-benchmark/oxford_flowers102", {"train": "train", "test": "test"},
             _parquet("data", ("train", "validation", "test")),
             "dpdl-benchmark/oxford_flowers102 files (data/train-00000-of-00001, data/validation-00000-of-00001, "
             "data/test-0000k-of-00006 .parquet; columns image, label)",
             classnames=(
                 "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
                 "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
                 "colt's foot", "king protea", "spear thistle", "yellow iris", "globe flower", "purple coneflower",
                 "peruvian lily", "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
                 "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
                 "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
                 "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort",
                 "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
                 "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
                 "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
                 "geranium", "orange dahlia", "pink and yellow dahlia", "cautleya spicata", "japanese anemone",
                 "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
                 "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
                 "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
                 "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
                 "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove", "bougainvillea",
                 "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper",
                 "blackberry lily"),
             templates=("a photo of a {}, a type of flower.",), published=_pub(66.70, 70.24, 69.07, 79.23)),
    CatalogEntry("stl10", "tanganke/stl10", {"train": "train", "test": "test"}, _parquet("data"),
             "tanganke/stl10 README.md (data/{train,test}-*; features image, label: airplane ... truck)",
             templates=("a photo of a {}.", "a photo of the {}."), published=_pub(97.13, 96.56, 98.25, 99.36)),
    CatalogEntry("dtd", "tanganke/dtd", {"train": "train", "test": "test"}, _parquet("data"),
             "tanganke/dtd README.md (data/{train,test}-*; features image, label: 47 names, banded ... zigzagged)",
             templates=("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
                        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
                        "a photo of the {} thing.", "a photo of the {} object."),
             published=_pub(44.36, 55.69, 44.95, 55.37)),
    CatalogEntry("eurosat", "tanganke/eurosat", {"train": "train", "test": "test"}, _parquet("data"),
             "tanganke/eurosat README.md (data/{train,test,contrast,...}-00000-of-00001; features image, label)",
             classnames=("annual crop land", "forest", "brushland or shrubland", "highway or road",
                         "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                         "residential buildings or homes or apartments", "river", "lake or sea"),
             templates=("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                        "a centered satellite photo of the {}."), published=_pub(50.44, 48.06, 55.94, 62.63)),
    CatalogEntry("mnist", "ylecun/mnist", {"train": "train", "test": "test"}, _parquet("mnist"),
             "ylecun/mnist README.md (configs: mnist/{train,test}-*; features image, label: '0' ... '9')",
             classnames=tuple(str(d) for d in range(10)), templates=('a photo of the number: "{}".',),
             published=_pub(48.39, 69.96, 51.35, 76.34)),
    CatalogEntry("fashion_mnist", "zalando-datasets/fashion_mnist", {"train": "train", "test": "test"},
             _parquet("fashion_mnist"),
             "zalando-datasets/fashion_mnist README.md (configs: fashion_mnist/{train,test}-*; features "
             "image, label: 'T - shirt / top', 'Trouser', ...); the Debian package's README: 'T-shirt/top'",
             classnames=tuple(FASHION_MNIST_CLASSES), templates=("a photo of a {}.",)),
    CatalogEntry("imagenet", "ILSVRC/imagenet-1k", {"train": "train", "test": "validation"}, {},
             "read by harness.data.imagenet (an ImageFolder, or the hub id through the cache), not by this module",
             templates=("openai_imagenet",), published=_pub(63.32, 66.56, 68.34, 75.54)),
    CatalogEntry("flickr30k", "nlphuji/flickr30k", {"test": "test"}, {"test": "TEST/test/*.parquet"},
             "nlphuji/flickr30k flickr30k.py (a loading script; config TEST, one split 'test' of 31,783 rows: image, "
             "caption (5 strings), sentids, split (Karpathy's train/val/test), img_id, filename); read from its "
             "parquet export, refs/convert/parquet TEST/test/", revision="refs/convert/parquet", task="retrieval",
             captions_column="caption",
             filter=("split", "test"), published=_pub(68.84, 75.44, 72.18, 75.08)),
    CatalogEntry("mscoco", "nlphuji/mscoco_2014_5k_test_image_text_retrieval", {"test": "test"},
             {"test": "TEST/test/*.parquet"}, "nlphuji/mscoco_2014_5k_test_image_text_retrieval "
             "mscoco_2014_5k_test_image_text_retrieval.py (a loading script; config TEST, split 'test' of 5,000 rows: "
             "image, caption (5 strings)); read from its parquet export, refs/convert/parquet TEST/test/",
             revision="refs/convert/parquet", task="retrieval",
             captions_column="caption", published=_pub(40.28, 47.83, 42.75, 46.42)),
]}


def entry(name: str) -> CatalogEntry:
    from ..infra.suite import ConfigError

    if name not in CATALOG:
        import difflib

        close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.5)
        raise ConfigError(f"unknown data set {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + f": choose from {', '.join(CATALOG)}")
    return CATALOG[name]


def templates(s: CatalogEntry) -> list[str]:
    if s.templates == ("openai_imagenet",):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    return list(s.templates)


def local_files(s: CatalogEntry, split: str, root: Path) -> list[Path]:
    """The files of `split` in a local copy laid out as the hub serves them (root/<files[split]>)."""
    pattern = s.files.get(split)
    return sorted(root.glob(pattern)) if pattern else []


def _imagefolder_split(root: Path, split: str) -> Path | None:
    folder = root / split
    if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
        return folder
    return None


def check_local(s: CatalogEntry, split: str, root: str | os.PathLike) -> str:
    """"parquet" or "imagefolder": the layout of a local copy, or a ConfigError saying what was expected."""
    from ..infra.suite import ConfigError

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{s.name}: local copy {root} does not exist")
    if local_files(s, split, root):
        return "parquet"
    if s.task == "classification" and _imagefolder_split(root, split):
        return "imagefolder"
    expected = f"{root}/{s.files[split]} (the files of {s.hub_id}" + (f" at revision {s.revision}" if s.revision
                                                                      else "") + ", as the hub serves them)"
    if s.task == "classification":
        expected += f", or an ImageFolder {root}/{split}/<class>/<image>"
    raise ConfigError(f"{s.name}: the local copy {root} is in no layout this harness reads for split {split!r}: "
                      f"expected {expected}")


def _hub_or_local(s: CatalogEntry, split: str, root: str | os.PathLike | None):
    """The split as a datasets.Dataset: a local copy (the hub's files, or an ImageFolder) when root is given, else
    the hub repository's files through the Hugging Face cache (data_files named: no loading script runs)."""
    import datasets

    if root is not None:
        root = Path(root)
        if check_local(s, split, root) == "parquet":
            files = [str(p) for p in local_files(s, split, root)]
            return load_local("parquet", data_files={split: files}, split=split), root
        folder = _imagefolder_split(root, split)
        return load_local("imagefolder", data_files={split: str(folder / "**")}, split=split), root
    try:
        return datasets.load_dataset(s.hub_id, revision=s.revision, data_files={split: s.files[split]},
                                     split=split), None
    except Exception as e:
        raise FileNotFoundError(
            f"{s.name} is not available: it is read from the Hugging Face cache ({s.hub_id}"
            + (f", revision {s.revision}" if s.revision else "") + f", files {s.files[split]}; run once online with "
            f"HF_DATASETS_OFFLINE=0 to fill it), or from a local copy (the data set's root: those files under it, or "
            f"an ImageFolder root/{split}/<class>/<image>). Cause: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e


def hub_classnames(s: CatalogEntry, names: list[str]) -> list[str]:
    """The data set's own class names as they should read: `rename` applied, "_" read as " "."""
    return [s.rename.get(n, n).replace("_", " ") for n in names]


def load(name: str, role: str, root: str | os.PathLike | None = None) -> ImageData:
    """Split `role` ("train" or "test") of a classification data set, as an ImageData (image and label columns
    named "image" and "label", class names as declared)."""
    import datasets

    s = entry(name)
    if s.task != "classification":
        raise ValueError(f"{name} is a retrieval data set: use load_retrieval")
    if not s.files:
        raise ValueError(f"{name}: {s.source}")
    ds, local = _hub_or_local(s, s.splits[role], root)
    ds = _rename(ds, s.image_column, "image")
    ds = _rename(ds, s.label_column, "label")
    label = ds.features["label"]
    if isinstance(label, datasets.ClassLabel):
        count = label.num_classes
        names = list(s.classnames) if s.classnames else hub_classnames(s, label.names)
    elif s.classnames:  # plain integer labels: the declared names say how many classes there are
        count, names = len(s.classnames), list(s.classnames)
        top = max(ds["label"]) if len(ds) else -1
        if top >= count:
            raise ValueError(f"{name}: label {top} in the data, but {count} class names are declared")
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    else:
        raise ValueError(f"{name}: the label column {s.label_column!r} holds {label}, not class labels, and no "
                         "class names are declared")
    if len(names) != count:
        raise ValueError(f"{name}: {len(names)} class names declared, the data set has {count} classes")
    fingerprint, sources = local_fingerprint(local) if local else hub_fingerprint(ds)
    return ImageData(name, role, ds, names, fingerprint, sources=sources)


@dataclass
class RetrievalData:
    name: str
    data: ImageData  # the images (label: the image's own index)
    captions: list[str]  # every caption
    caption_image: list[int]  # the image each caption describes


def load_retrieval(name: str | CatalogEntry, root: str | os.PathLike | None = None) -> RetrievalData:
    """An image–caption set: every image of the split (Flickr30k: the rows of the Karpathy test split) and all
    of its captions."""

    s = name if isinstance(name, CatalogEntry) else entry(name)
    name = s.name
    if s.task != "retrieval":
        raise ValueError(f"{name} is a classification data set: use load")
    ds, local = _hub_or_local(s, s.splits["test"], root)
    if s.filter:
        column, value = s.filter
        if column not in ds.column_names:
            raise ValueError(f"{name}: no column {column!r} to keep the rows of its {value!r} split (the data set "
                             f"has {', '.join(ds.column_names)}); {s.source}")
        ds = ds.filter(lambda v: v == value, input_columns=[column])
    return retrieval_data(name, ds, s.image_column, s.captions_column, local_fingerprint(local) if local else None)


def retrieval_data(name: str, ds, image_column: str, captions_column: str,
                   fingerprint: tuple[str, dict] | None) -> RetrievalData:
    """An image–caption table (one row per image, its captions a string or a list) as a RetrievalData;
    `fingerprint`: (fingerprint, sources) of its files (None: datasets' own, from the hub cache)."""
    import datasets

    ds = _rename(ds, image_column, "image")
    captions, owner = [], []
    for i, caps in enumerate(ds[captions_column]):
        caps = [caps] if isinstance(caps, str) else list(caps)
        captions += caps
        owner += [i] * len(caps)
    ds = ds.select_columns(["image"]).add_column("label", list(range(len(ds))))
    ds = ds.cast_column("label", datasets.Value("int64"))
    value, sources = fingerprint or hub_fingerprint(ds)
    return RetrievalData(name, ImageData(name, "test", ds, [], value, sources=sources), captions, owner)


def _rename(ds, column: str, to: str):
    if column not in ds.column_names:
        raise ValueError(f"the data set has no column {column!r} (it has {', '.join(ds.column_names)})")
    return ds if column == to else ds.rename_column(column, to)


def local_fingerprint(root: Path) -> tuple[str, dict]:
    """(fingerprint, sources) of a local copy: every file under it (harness.infra.inputs)."""
    from ..infra import inputs

    with inputs.recording() as read:
        value = inputs.fingerprint(root)
    return value, read


def hub_fingerprint(ds) -> tuple[str, dict]:
    """(fingerprint, sources) of a data set read from the Hugging Face cache: datasets' own fingerprint, and the
    cache's Arrow files as the sources a finished unit is checked against."""
    from ..infra import inputs

    with inputs.recording() as read:
        for f in getattr(ds, "cache_files", None) or []:
            inputs.fingerprint(f["filename"])
    return ds._fingerprint, read


def dataset_means(df, metric: str = "top1"):
    """One row per model and library holding the mean of `metric` over the classification data sets (as
    CLIP_benchmark reports next to each data set's row); nothing when each model saw one data set."""
    cls = df[(df.get("task") == "classification") & df.get("dataset").notna()] if "dataset" in df else df.iloc[:0]
    groups = cls.groupby(["model", "library"], sort=False)
    if cls.empty or groups["dataset"].nunique().max() < 2:
        return df.iloc[:0]
    means = groups.agg(**{metric: (metric, "mean"), "datasets": ("dataset", "nunique")}).reset_index()
    if "diff_vs_published" in cls:  # the mean difference, over the data sets that have a published number
        means["diff_vs_published"] = groups["diff_vs_published"].mean().to_numpy()
    return means.assign(dataset="mean", task="classification (mean over data sets)")


def _check(spec, roles) -> None:
    e = entry(spec.name)
    if spec.root is not None:
        for role in roles if e.task == "classification" else ["test"]:
            if role in e.splits:
                check_local(e, e.splits[role], spec.root)


SOURCE = Source(lambda spec, role, names: load(spec.name, role, spec.root), _check,
                task=lambda spec: entry(spec.name).task, templates=lambda spec: templates(entry(spec.name)),
                load_retrieval=lambda spec: load_retrieval(spec.name, spec.root), check_name=entry)

"""The data sets users of LAION's CLIP_benchmark evaluate on, declared as data, one entry each, loaded through
Hugging Face `datasets`.

Each entry says where the data set comes from (a hub id, read from the Hugging Face cache — fill it once online —
or a local copy: a folder in the hub's parquet layout, or an ImageFolder), its split names, its image and label
columns, its class names (the CLIP paper's where they differ from the data set's own), the zero-shot templates the
CLIP paper published for it (OpenAI CLIP, data/prompts.md; CLIP_benchmark uses the same), and, where open_clip's
results table (docs/openclip_results.csv) has it, the published zero-shot score of the models the full profiles
name. Retrieval sets (Flickr30k, MSCOCO) hold an image and its captions.

    from harness import data
    data.load("cifar10", "test")                                       # an ImageData (harness.data: the registry)
    data.load({"name": "cifar10", "root": "/data/cifar10"}, "test")    # a local copy in the hub's layout
    data.catalog.CATALOG["cifar10"].templates

The hub ids are the ones the data sets are published under on the Hugging Face hub; none could be fetched here
(no hub): the loaders are tested on small copies written in each entry's layout (tests/test_catalog.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fashion_mnist import FASHION_MNIST_CLASSES
from .images import ImageData

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
    image_column: str = "image"
    label_column: str = "label"
    classnames: tuple[str, ...] | None = None  # None: the data set's own ClassLabel names, "_" read as " "
    templates: tuple[str, ...] = ("a photo of a {}.",)
    task: str = "classification"  # or "retrieval": captions_column holds each image's captions
    captions_column: str | None = None
    filter: tuple[str, str] | None = None  # (column, value): rows of a split kept (Flickr30k's Karpathy split)
    # published zero-shot top-1 (retrieval: the table's retrieval score), % — "MODEL/pretrained tag" -> value
    published: dict[str, float] = field(default_factory=dict)


def _pub(b32_openai, b32_laion, b16_openai, l14_openai) -> dict[str, float]:
    return {"ViT-B-32/openai": b32_openai, "ViT-B-32/laion2b_s34b_b79k": b32_laion, "ViT-B-16/openai": b16_openai,
            "ViT-L-14/openai": l14_openai}


CATALOG: dict[str, CatalogEntry] = {s.name: s for s in [
    CatalogEntry("cifar10", "uoft-cs/cifar10", {"train": "train", "test": "test"}, "img", "label",
             templates=tuple(_PHOTO), published=_pub(89.83, 93.58, 90.77, 95.59)),
    CatalogEntry("cifar100", "uoft-cs/cifar100", {"train": "train", "test": "test"}, "img", "fine_label",
             templates=tuple(_PHOTO), published=_pub(64.23, 75.55, 66.95, 75.82)),
    CatalogEntry("food101", "ethz/food101", {"train": "train", "test": "validation"},
             templates=("a photo of {}, a type of food.",), published=_pub(84.00, 82.69, 88.72, 93.05)),
    CatalogEntry("pets", "timm/oxford-iiit-pet", {"train": "train", "test": "test"},
             classnames=("Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle",
                         "Bengal", "Birman", "Bombay", "Boxer", "British Shorthair", "Chihuahua", "Egyptian Mau",
                         "English Cocker Spaniel", "English Setter", "German Shorthaired", "Great Pyrenees",
                         "Havanese", "Japanese Chin", "Keeshond", "Leonberger", "Maine Coon", "Miniature Pinscher",
                         "Newfoundland", "Persian", "Pomeranian", "Pug", "Ragdoll", "Russian Blue", "Saint Bernard",
                         "Samoyed", "Scottish Terrier", "Shiba Inu", "Siamese", "Sphynx",
                         "Staffordshire Bull Terrier", "Wheaten Terrier", "Yorkshire Terrier"),
             templates=("a photo of a {}, a type of pet.",), published=_pub(87.00, 90.76, 88.86, 93.23)),
    CatalogEntry("flowers102", "dpdl-benchmark/oxford_flowers102", {"train": "train", "test": "test"},
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
    CatalogEntry("stl10", "tanganke/stl10", {"train": "train", "test": "test"},
             templates=("a photo of a {}.", "a photo of the {}."), published=_pub(97.13, 96.56, 98.25, 99.36)),
    CatalogEntry("dtd", "tanganke/dtd", {"train": "train", "test": "test"},
             templates=("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
                        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
                        "a photo of the {} thing.", "a photo of the {} object."),
             published=_pub(44.36, 55.69, 44.95, 55.37)),
    CatalogEntry("eurosat", "tanganke/eurosat", {"train": "train", "test": "test"},
             classnames=("annual crop land", "forest", "brushland or shrubland", "highway or road",
                         "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                         "residential buildings or homes or apartments", "river", "lake or sea"),
             templates=("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                        "a centered satellite photo of the {}."), published=_pub(50.44, 48.06, 55.94, 62.63)),
    CatalogEntry("mnist", "ylecun/mnist", {"train": "train", "test": "test"},
             classnames=tuple(str(d) for d in range(10)), templates=('a photo of the number: "{}".',),
             published=_pub(48.39, 69.96, 51.35, 76.34)),
    CatalogEntry("fashion_mnist", "zalando-datasets/fashion_mnist", {"train": "train", "test": "test"},
             classnames=tuple(FASHION_MNIST_CLASSES), templates=("a photo of a {}.",)),
    CatalogEntry("imagenet", "ILSVRC/imagenet-1k", {"train": "train", "test": "validation"},
             templates=("openai_imagenet",), published=_pub(63.32, 66.56, 68.34, 75.54)),
    CatalogEntry("flickr30k", "nlphuji/flickr30k", {"test": "test"}, task="retrieval", captions_column="caption",
             filter=("split", "test"), published=_pub(68.84, 75.44, 72.18, 75.08)),
    CatalogEntry("mscoco", "nlphuji/mscoco_2014_5k_test_image_text_retrieval", {"test": "test"}, task="retrieval",
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


def _hub_or_local(s: CatalogEntry, split: str, root: str | os.PathLike | None):
    """The split as a datasets.Dataset: a local copy (the hub's parquet layout, or an ImageFolder) when root is
    given, else the hub id through the Hugging Face cache."""
    import datasets

    if root is not None:
        root = Path(root)
        if not root.exists():
            from ..infra.suite import ConfigError

            raise ConfigError(f"{s.name}: local copy {root} does not exist")
        parquet = sorted(root.rglob(f"{split}-*.parquet"))
        if parquet:
            return datasets.load_dataset("parquet", data_files={split: [str(p) for p in parquet]}, split=split), root
        return datasets.load_dataset("imagefolder", data_files={split: str(root / split / "**")}, split=split), root
    try:
        return datasets.load_dataset(s.hub_id, split=split), None
    except Exception as e:
        raise FileNotFoundError(
            f"{s.name} is not available: it is read from the Hugging Face cache ({s.hub_id}; run once online with "
            f"HF_DATASETS_OFFLINE=0 to fill it), or from a local copy (--set with the data set's root: a folder in "
            f"the hub's parquet layout, or an ImageFolder). Cause: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e


def load(name: str, role: str, root: str | os.PathLike | None = None) -> ImageData:
    """Split `role` ("train" or "test") of a classification data set, as an ImageData (image and label columns
    named "image" and "label", class names as declared)."""
    s = entry(name)
    if s.task != "classification":
        raise ValueError(f"{name} is a retrieval data set: use load_retrieval")
    ds, local = _hub_or_local(s, s.splits[role], root)
    ds = _rename(ds, s.image_column, "image")
    ds = _rename(ds, s.label_column, "label")
    names = list(s.classnames) if s.classnames else [c.replace("_", " ") for c in ds.features["label"].names]
    if s.classnames and len(names) != ds.features["label"].num_classes:
        raise ValueError(f"{name}: {len(names)} class names declared, the data set has "
                         f"{ds.features['label'].num_classes} classes")
    fingerprint = _fingerprint(local) if local else ds._fingerprint
    return ImageData(name, role, ds, names, fingerprint)


@dataclass
class RetrievalData:
    name: str
    data: ImageData  # the images (label: the image's own index)
    captions: list[str]  # every caption
    caption_image: list[int]  # the image each caption describes


def load_retrieval(name: str, root: str | os.PathLike | None = None) -> RetrievalData:
    import datasets

    s = entry(name)
    if s.task != "retrieval":
        raise ValueError(f"{name} is a classification data set: use load")
    ds, local = _hub_or_local(s, s.splits["test"], root)
    if s.filter and s.filter[0] in ds.column_names:
        column, value = s.filter
        ds = ds.filter(lambda v: v == value, input_columns=[column])
    ds = _rename(ds, s.image_column, "image")
    captions, owner = [], []
    for i, caps in enumerate(ds[s.captions_column]):
        caps = [caps] if isinstance(caps, str) else list(caps)
        captions += caps
        owner += [i] * len(caps)
    ds = ds.select_columns(["image"]).add_column("label", list(range(len(ds))))
    ds = ds.cast_column("label", datasets.Value("int64"))
    fingerprint = _fingerprint(local) if local else ds._fingerprint
    return RetrievalData(name, ImageData(name, "test", ds, [], fingerprint), captions, owner)


def _rename(ds, column: str, to: str):
    if column == to:
        return ds
    if column not in ds.column_names:
        raise ValueError(f"the data set has no column {column!r} (it has {', '.join(ds.column_names)})")
    return ds.rename_column(column, to)


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(root)}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


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

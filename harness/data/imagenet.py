"""ImageNet-1k, for users who have it: a local folder in ImageFolder layout (train/ and val/, one sub-folder per
class id such as n01440764; a subset of the classes works) named by $VITCLIP_IMAGENET_DIR or the data set's root,
or the hub's `ILSVRC/imagenet-1k` (gated: accept its terms, log in, fill the cache once online). Class names are
open_clip's, looked up by WordNet id.
"""

from __future__ import annotations

import os
from pathlib import Path

from .images import ImageData, load_local
from .source import Source

IMAGENET_ENV = "VITCLIP_IMAGENET_DIR"


def classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def wnids() -> list[str]:
    """ImageNet-1k's 1,000 WordNet ids in class-index order (the list timm ships)."""
    from importlib import resources

    text = resources.files("timm.data._info").joinpath("imagenet_synsets.txt").read_text()
    return text.split()


def split_folder(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / ("train" if split == "train" else "val")


def check_folder(root: str | os.PathLike, splits: list[str]) -> None:
    """Refuse, before any work, an ImageNet folder that cannot be read as one: a missing split folder, a class
    folder that is not one of ImageNet's WordNet ids, or splits with different classes."""
    from ..infra.suite import ConfigError

    known = set(wnids())
    classes = {}
    for split in splits:
        folder = split_folder(root, split)
        if not folder.is_dir():
            raise ConfigError(f"ImageNet folder {folder} does not exist: {root} must hold train/ and val/, one "
                              "sub-folder per class id (n01440764, ...); point the data set's root (or "
                              f"${IMAGENET_ENV}) at the folder that holds them")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = [c for c in found if c not in known]
        if unknown:
            raise ConfigError(f"{folder} has class folder(s) that are not ImageNet WordNet ids: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. Move them out "
                              "(the class list is ImageNet-1k's 1,000 synsets, timm/data/_info/imagenet_synsets.txt)")
        if not found:
            raise ConfigError(f"{folder} holds no class folders: expected one sub-folder per class id (n01440764, ...)")
        classes[split] = found
    if len({tuple(c) for c in classes.values()}) > 1:
        a, b = list(classes)[:2]
        diff = sorted(set(classes[a]) ^ set(classes[b]))
        raise ConfigError(f"the {a} and {b} folders of {root} hold different classes (e.g. {', '.join(diff[:5])}): "
                          "both splits need the same class folders")


def load(split: str, root: str | os.PathLike | None = None) -> ImageData:
    """ImageNet-1k "train" or "validation": from `root` (or $VITCLIP_IMAGENET_DIR) in ImageFolder layout,
    else from the Hugging Face hub cache (ILSVRC/imagenet-1k). A folder may hold a subset of the classes; class
    names are open_clip's, looked up by WordNet id."""
    import datasets

    root = root or os.environ.get(IMAGENET_ENV)
    if root:
        check_folder(root, [split])
        folder = split_folder(root, split)
        # data_files named explicitly: given data_dir, datasets infers splits from file names, and ImageNet's
        # validation files (ILSVRC2012_val_00000001.JPEG) would become a "validation" split of their own
        ds = load_local("imagefolder", data_files={"train": str(folder / "**")}, split="train")
        index = {w: i for i, w in enumerate(wnids())}
        names = [classnames()[index[w]] for w in ds.features["label"].names]
        from .catalog import local_fingerprint

        fingerprint, sources = local_fingerprint(folder)
        return ImageData("imagenet", split, ds, names, fingerprint, sources=sources)
    try:
        ds = datasets.load_dataset("ILSVRC/imagenet-1k", split=split)
    except Exception as e:
        raise FileNotFoundError(
            "ImageNet-1k is not available. Provide it either (1) as a local folder in ImageFolder layout "
            f"(train/ and val/, one sub-folder per class id) named by {IMAGENET_ENV} or the data set's root "
            "({\"name\": \"imagenet\", \"root\": ...}), or (2) through the Hugging Face hub: accept the terms of "
            "ILSVRC/imagenet-1k, log in, "
            f"and fill the cache once online (HF_DATASETS_OFFLINE=0). Cause: {type(e).__name__}: {e}"
        ) from e
    from .catalog import hub_fingerprint

    fingerprint, sources = hub_fingerprint(ds)
    return ImageData("imagenet", split, ds, classnames(), fingerprint, sources=sources)


def _check(spec, roles) -> None:
    if spec.root:
        check_folder(spec.root, ["train" if r == "train" else "validation" for r in roles])


def _templates(spec):
    from . import catalog

    return catalog.templates(catalog.entry("imagenet"))


SOURCE = Source(lambda spec, role, names: load("train" if role == "train" else "validation", spec.root), _check,
                templates=_templates)

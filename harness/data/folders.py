"""Your own data, as folders of images or a list of them.

imagefolder:PATH — PATH/train/ and PATH/val/ (or PATH/test/), one sub-folder of images per class, the same class
    folders in each split (torchvision's and `datasets`' ImageFolder layout). Class names are the folder names,
    "_" read as " "; a class-name file can give others.
manifest:FILE — a CSV (with a header) or JSON Lines file, one row per image: `path` (absolute, or relative to
    the file's folder), `label` (a class name, or a class index when class names are given), and an optional
    `split` (train, or test / val / validation). Without a split column the whole list is a test set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..infra import inputs
from ..infra.suite import ConfigError
from .images import ImageData, load_local
from .source import Source

SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
MANIFEST_SPLITS = {"train": ("train",), "test": ("test", "val", "validation")}


# ------------------------------------------------------------------------------------------------ imagefolder
def _split_folder(root: Path, role: str) -> Path | None:
    return next((root / n for n in SPLIT_FOLDERS[role] if (root / n).is_dir()), None)


def check_imagefolder(root: str | Path, roles: list[str]) -> None:
    """Refuse, before any work, a folder that is not in ImageFolder layout, saying what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"imagefolder:{root}: no such folder")
    classes = {}
    for role in roles:
        folder = _split_folder(root, role)
        if folder is None:
            raise ConfigError(f"imagefolder:{root}: no {' or '.join(n + '/' for n in SPLIT_FOLDERS[role])} folder "
                              f"for the {role} split; expected {root}/train/<class>/<image> and "
                              f"{root}/val/<class>/<image> (or test/)")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not found:
            raise ConfigError(f"imagefolder:{root}: {folder} holds no class folders (expected "
                              f"{folder}/<class>/<image>)")
        classes[role] = found
    if len({tuple(c) for c in classes.values()}) > 1:
        diff = sorted(set(classes["train"]) ^ set(classes["test"]))
        raise ConfigError(f"imagefolder:{root}: train and test hold different class folders (e.g. "
                          f"{', '.join(diff[:5])}): both splits need the same classes")


def load_imagefolder(root: str | Path, role: str) -> ImageData:
    root = Path(root)
    check_imagefolder(root, [role])
    folder = _split_folder(root, role)
    # data_files named explicitly: given data_dir, datasets infers splits from the folder and file names
    ds = load_local("imagefolder", data_files={"train": str(folder / "**")}, split="train")
    names = [c.replace("_", " ") for c in ds.features["label"].names]
    with inputs.recording() as read:
        fingerprint = inputs.fingerprint(folder)
    # your own folders: a 16-bit image is read scaled to 8 bits (its picture), where PIL's convert would clip it
    return ImageData(f"imagefolder:{root}", role, ds, names, fingerprint, reading="scaled", sources=read)


# --------------------------------------------------------------------------------------------------- manifest
def _manifest_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"manifest:{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"manifest:{path}: line {i + 1} is not JSON ({e})") from None
    else:
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"manifest:{path}: no rows")
    missing = [c for c in ("path", "label") if c not in rows[0]]
    if missing:
        raise ConfigError(f"manifest:{path}: no {' or '.join(missing)} column (it has {', '.join(rows[0])}); "
                          "expected path, label and optionally split")
    return rows


def check_manifest(path: str | Path, roles: list[str]) -> None:
    path = Path(path)
    rows = _manifest_rows(path)
    has_split = "split" in rows[0]
    for role in roles:
        if not has_split and role != "test":
            raise ConfigError(f"manifest:{path} has no split column: it serves as a test set only; add a split "
                              "column (train / test) to use it for training a probe")
        if has_split and not any(str(r["split"]).lower() in MANIFEST_SPLITS[role] for r in rows):
            raise ConfigError(f"manifest:{path}: no row has split {' or '.join(MANIFEST_SPLITS[role])}")
    absent = [r["path"] for r in rows if not _image_path(path, r["path"]).is_file()]
    if absent:
        raise ConfigError(f"manifest:{path}: {len(absent)} image(s) not found, e.g. {absent[0]} (paths are read "
                          f"relative to {path.parent})")


def _image_path(manifest: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else manifest.parent / p


def load_manifest(path: str | Path, role: str, classnames: list[str] | None = None) -> ImageData:
    """The rows of `role` as an ImageData; labels are class names (sorted into indices) or, when `classnames`
    are given, indices into them (or names among them)."""
    import datasets

    path = Path(path)
    check_manifest(path, [role])
    rows = _manifest_rows(path)
    labels = [str(r["label"]) for r in rows]
    if classnames is not None:
        index = {n: i for i, n in enumerate(classnames)}
        ids = [index[v] if v in index else int(v) if v.isdigit() and int(v) < len(classnames) else None
               for v in labels]
        if None in ids:
            bad = labels[ids.index(None)]
            raise ConfigError(f"manifest:{path}: label {bad!r} is neither a given class name nor an index below "
                              f"{len(classnames)}")
        names = list(classnames)
    else:
        names = sorted(set(labels))
        ids = [names.index(v) for v in labels]
    keep = [i for i, r in enumerate(rows) if "split" not in r or str(r["split"]).lower() in MANIFEST_SPLITS[role]]
    images = [str(_image_path(path, rows[i]["path"])) for i in keep]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [ids[i] for i in keep]}, features=features)
    with inputs.recording() as read:
        h = hashlib.sha256(inputs.fingerprint(path).encode())
        h.update(inputs.files_fingerprint([Path(p) for p in images], path.parent).encode())
    return ImageData(f"manifest:{path}", role, ds, [n.replace("_", " ") for n in names], h.hexdigest()[:16],
                     reading="scaled", sources=read)


def _names_of_manifest(spec, role, names):
    return load_manifest(spec.path, role, names)


IMAGEFOLDER = Source(lambda spec, role, names: load_imagefolder(spec.path, role),
                     lambda spec, roles: check_imagefolder(spec.path, list(roles)), prefixed=True)
MANIFEST = Source(_names_of_manifest, lambda spec, roles: check_manifest(spec.path, list(roles)), prefixed=True)

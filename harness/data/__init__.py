"""One registry for every data set a suite names: a string or a dict, the same everywhere.

    "fashion_mnist"                  the embedded default (Debian's dataset-fashion-mnist; the hub copy online)
    "imagenet"                       ImageNet-1k: an ImageFolder named by root or $VITCLIP_IMAGENET_DIR, or the hub
    "cifar10", "food101", ...        CLIP_benchmark's data sets, declared in harness.data.catalog (hub cache, or a
    "flickr30k", "mscoco"            local copy given as root); the last two are image–caption retrieval sets
    "datacomp"                       DataComp's 38 zero-shot tasks (harness.data.datacomp), each as below
    "datacomp:vtab/caltech101"       one of them, by its tasklist.yml key (webdataset, retrieval or WinoGAViL)
    "imagefolder:/data/x"            your folders: train/ and val/ (or test/), one sub-folder per class
    "manifest:/data/x.csv"           your list: path, label and an optional split column (CSV or JSON Lines)
    {"name": "imagefolder:/data/x", "classnames": "names.txt", "templates": "templates.json",
     "root": "/copies/x", "train_per_class": 500, "test_per_class": 500}

The dict form adds: `root`, a local copy of a catalog data set (or ImageNet's folder); `classnames` and `templates`,
a list or a file (harness.data.texts: text files, JSON lists, CLIP_benchmark's JSON files as they are); and
what a suite reads of it (per-class subset sizes, ...), kept in `options`.

    data.load(spec, "train")      an ImageData: a datasets.Dataset with image and label columns, class names,
                                  zero-shot templates, a content fingerprint for cache keys
    data.load_retrieval(spec)     a RetrievalData: images and their captions
    data.check(spec, roles)       before any work: a known name, a layout that is recognised (DataComp's tasks:
                                  every file each one needs; data.check_all gathers the missing ones of many)

A split is asked for by role, "train" or "test"; each source maps it to its own split (ImageNet's "validation",
Food-101's "validation", an ImageFolder's val/ or test/).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..infra import inputs
from ..infra.suite import ConfigError
from . import catalog, datacomp, fashion_mnist, folders, imagenet, images, texts  # noqa: F401  (harness.data.images)
from .images import ImageData
from .source import DEFAULT_TEMPLATES, Source  # noqa: F401  (re-exported)

# the registry: a source's name -> how it is checked, loaded, and what it holds (harness.data.source.Source); a
# name with a prefix ("imagefolder:...") is that source's, "imagenet" and "fashion_mnist" theirs, any other name
# the catalog's (CLIP_benchmark's sets)
SOURCES: dict[str, Source] = {"fashion_mnist": fashion_mnist.SOURCE, "imagenet": imagenet.SOURCE,
                              "imagefolder": folders.IMAGEFOLDER, "manifest": folders.MANIFEST,
                              "datacomp": datacomp.SOURCE, "catalog": catalog.SOURCE}
PREFIXES = tuple(name for name, s in SOURCES.items() if s.prefixed)
DATA_KEYS = ("name", "root", "classnames", "templates")


@dataclass(frozen=True)
class DataSpec:
    name: str  # "fashion_mnist", "cifar10", "imagefolder:/data/x", "manifest:/data/x.csv"
    root: str | None = None  # a local copy (catalog data sets, ImageNet's folder)
    classnames: object = None  # None (the data set's own), a list, or a file
    templates: object = None  # None (the catalog's, or "a photo of a {}."), a list, or a file
    options: dict = field(default_factory=dict, hash=False)  # what a suite reads of it (per-class sizes, ...)

    @property
    def source(self) -> str:
        """"fashion_mnist", "imagenet", "imagefolder", "manifest", "datacomp" or "catalog"."""
        head, sep, _ = self.name.partition(":")
        if sep:
            return head
        if self.name == "imagenet" or (self.name == "fashion_mnist" and self.root is None):
            return self.name  # a root for Fashion-MNIST is a copy in the hub's layout: the catalog reads it
        return "catalog"

    @property
    def path(self) -> str:
        return self.name.partition(":")[2]


def parse(spec: str | dict | DataSpec) -> DataSpec:
    if isinstance(spec, DataSpec):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"data set {spec!r}: name one as a string (fashion_mnist, cifar10, imagefolder:PATH, "
                          "manifest:FILE) or a dict {\"name\": ..., \"classnames\": ..., \"templates\": ...}")
    head, sep, rest = spec["name"].partition(":")
    if sep and (head not in PREFIXES or not rest):
        raise ConfigError(f"data set {spec['name']!r}: a prefixed name is "
                          + ", ".join(f"{p}:..." for p in PREFIXES))
    if spec["name"] == "datacomp":
        raise ConfigError("'datacomp' names DataComp's 38 tasks: a suite's datasets list expands it (data.expand); "
                          "one task is datacomp:KEY")
    checker = SOURCES[head].check_name if sep else SOURCES["catalog"].check_name
    if checker is not None:
        checker(rest if sep else spec["name"])  # a known name, or the closest ones
    root = spec.get("root")
    if root is None and spec["name"] == "imagenet":
        root = os.environ.get("VITCLIP_IMAGENET_DIR") or None
    return DataSpec(spec["name"], root, spec.get("classnames"), spec.get("templates"),
                    {k: v for k, v in spec.items() if k not in DATA_KEYS})


def expand(specs: list) -> list[DataSpec]:
    """A suite's list of data sets with the named list "datacomp" (a string, or a dict that gives a root: the
    folder DataComp's download_evalsets.py fills) as its 38 tasks."""
    out = []
    for spec in specs:
        named = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
        if named == "datacomp":
            extra = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else {}
            out += [parse({"name": f"datacomp:{t.key}", **extra}) for t in datacomp.TASKS]
        else:
            out.append(parse(spec))
    return out


def task(spec: str | dict | DataSpec) -> str:
    """"classification", "retrieval" or "winogavil" (DataComp's WinoGAViL)."""
    s = parse(spec)
    return SOURCES[s.source].task(s)


def check(spec: str | dict | DataSpec, roles: list[str] = ("train", "test")) -> DataSpec:
    """The declaration parsed and its local files checked before any work (a hub copy is checked when read)."""

    s = parse(spec)
    SOURCES[s.source].check(s, roles)
    for source in (s.classnames, s.templates):
        if isinstance(source, str) and not os.path.isfile(source):
            raise ConfigError(f"{s.name}: file {source} does not exist")
    return s


def check_all(specs: list, roles: list[str] = ("train", "test")) -> list[DataSpec]:
    """data.check for each; DataComp's tasks checked together (one error naming every missing task)."""
    parsed = [parse(s) for s in specs]
    tasks: dict[str | None, list[str]] = {}
    for s in parsed:
        if s.source == "datacomp":
            tasks.setdefault(s.root, []).append(s.path)
    for root, keys in tasks.items():
        datacomp.check(keys, root)
    return [check(s, roles) if s.source != "datacomp" else s for s in parsed]


def load(spec: str | dict | DataSpec, role: str) -> ImageData:
    """Split `role` ("train" or "test") of a classification data set, with its class names and templates (the
    declaration's files or lists over the data set's own)."""

    s = parse(spec)
    if role not in ("train", "test"):
        raise ValueError(f"role {role!r}: 'train' or 'test'")
    given = None if s.classnames is None else texts.classnames(s.classnames, s.name)
    data = SOURCES[s.source].load(s, role, given)
    if given is not None:
        data = data.with_names(texts.classnames(given, s.name, len(data.classnames)))
    own = templates(s)
    inputs.note(data.sources)  # a copy read earlier in this process (Fashion-MNIST) is a read all the same
    return data if own is None else data.with_templates(own)


def templates(spec: str | dict | DataSpec) -> list[str] | dict[str, list[str]]:
    """The zero-shot templates: the declaration's, else the catalog's, else CLIP's plain "a photo of a {}.";
    None for a DataComp task, whose templates come with its files."""

    s = parse(spec)
    if s.templates is not None:
        return texts.templates(s.templates, s.name)
    return SOURCES[s.source].templates(s)


def load_retrieval(spec: str | dict | DataSpec):
    """An image–caption set (Flickr30k, MSCOCO) as a RetrievalData."""

    s = parse(spec)
    if SOURCES[s.source].load_retrieval is None:
        raise ConfigError(f"{s.name}: not an image–caption set")
    r = SOURCES[s.source].load_retrieval(s)
    inputs.note(r.data.sources)
    return r

"""Webdataset shards (.tar) read sample by sample, as CLIP_benchmark's reader reads them, without copying a pixel.

CLIP_benchmark's build_wds_dataset (clip_benchmark/datasets/builder.py, the reader DataComp's eval_utils run) is
`wds.WebDataset(shards).decode(ImageHandler("pil", ["webp", "png", "jpg", "jpeg"])).to_tuple(["webp", "png", "jpg",
"jpeg"], "cls")`: webdataset groups a shard's consecutive files by their name up to the first dot
(tariterators.base_plus_ext, group_by_keys: suffixes lower-cased, files named __*__ skipped), and a sample's image is
the first of .webp, .png, .jpg, .jpeg it holds — whichever format each sample is stored in. `datasets`' own
webdataset builder instead takes its columns from a shard's first samples, so a .png sample after .webp ones has
no image there; this module reads every sample.

An image is kept as a reference into its shard (path, member, byte offset and size), read and decoded when a
DataLoader worker asks for it (harness.data.images.to_pil): a task of 100,000 images costs a scan of the shards'
headers, not a second copy of them.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
_SKIP = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skip_meta


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    """A member name as webdataset splits it: (sample key, all its extensions): "a/s01.seg.png" -> ("a/s01",
    "seg.png")."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", path)
    return (match.group(1), match.group(2)) if match else (None, None)


def samples(shard: str | Path, read: tuple[str, ...] = ("cls", "npy")) -> Iterator[dict]:
    """Each sample of one shard in order: {"__key__": key, suffix: value}, where an image suffix holds its member
    (name, byte offset, size), a suffix in `read` its bytes, any other None. A suffix twice in one sample is an error,
    as in webdataset."""
    current: dict | None = None
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            name = member.name
            if not member.isreg() or _SKIP.match(name) or ("/" not in name and name.startswith("__")
                                                            and name.endswith("__")):
                continue
            key, suffix = base_plus_ext(name)
            if key is None:
                continue
            suffix = suffix.lower()
            if current is None or key != current["__key__"]:
                if current is not None and len(current) > 1:
                    yield current
                current = {"__key__": key}
            if suffix in current:
                raise ValueError(f"{shard}: {name}: a second .{suffix} file for sample {key}")
            if suffix in IMAGE_EXTENSIONS:
                current[suffix] = (name, member.offset_data, member.size)
            elif suffix in read:
                current[suffix] = tar.extractfile(member).read()
            else:
                current[suffix] = None
            tar.members = []  # as webdataset does: a shard of 100,000 files keeps no list of them
    if current is not None and len(current) > 1:
        yield current


def image_cell(shard: str | Path, sample: dict) -> dict:
    """The sample's image as a reference into its shard: the first of .webp, .png, .jpg, .jpeg it holds
    (member None when it holds none: reported as an unreadable image when it is read)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        return {"shard": str(shard), "member": f"{sample['__key__']} (no image)", "offset": -1, "size": -1}
    member, offset, size = sample[ext]
    return {"shard": str(shard), "member": member, "offset": offset, "size": size}


def read_image(cell: dict) -> bytes:
    """The bytes of a referenced image; ValueError when its sample holds none."""
    if cell["offset"] < 0:
        raise ValueError(f"{cell['shard']}: sample {cell['member']}: no .webp, .png, .jpg or .jpeg file")
    with open(cell["shard"], "rb") as f:
        f.seek(cell["offset"])
        return f.read(cell["size"])

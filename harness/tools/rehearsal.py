"""A rehearsal of the full profile: an ImageNet-shaped folder and library-format checkpoints, written here.

    python -m harness rehearsal DIR [--classes 1000] [--train-per-class 2] [--val-per-class 1] [--seed 0]
                                    [--set SUITE.KEY=VALUE ...] [--workers 2]
    python -m harness run --profile full --overrides DIR/overrides.json

DIR/train/<wnid>/ and DIR/val/<wnid>/ hold JPEG files, one folder per real ImageNet WordNet id (the first
`classes` of timm's list of the 1,000), at ImageNet's sizes (most 500×375 or 375×500, some small, a few large)
whose content is cut from real photographs (scikit-image's and scikit-learn's sample images: random crops,
scales, flips and colour jitter), so that decoding and resizing cost what they cost on ImageNet. The oddities a
real copy holds are there too: a CMYK JPEG, a grayscale JPEG, a PNG under a .JPEG name, a truncated file and an
empty file. Everything is deterministic for a seed.

DIR/weights/ holds a checkpoint in each library's own format (timm: safetensors; open_clip: a torch state_dict,
.pt) for every model the full profiles name — random weights: the rehearsal measures the machinery, not accuracy —
and DIR/overrides.json points each suite's full profile at the tree and the files. Overrides given with --set
(SUITE.KEY=VALUE, as for `run`) shape the models first, so a CPU can rehearse with smaller towers.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower", "hubble_deep_field",
           "immunohistochemistry", "retina")


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()[..., :3]


_PHOTOS: dict[str, Image.Image] = {}


def photos() -> dict[str, Image.Image]:
    if not _PHOTOS:
        _PHOTOS.update({n: Image.fromarray(_photo(n)) for n in SOURCES})
    return _PHOTOS


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like ImageNet's: most 500×375 or 375×500, some other medium sizes, a few small and
    a few large ones."""
    u = rng.random()
    if u < 0.55:
        return 500, 375
    if u < 0.75:
        return 375, 500
    if u < 0.90:
        return int(rng.integers(300, 501)), int(rng.integers(300, 501))
    if u < 0.97:
        side = int(rng.integers(60, 250))
        return side, int(side * rng.uniform(0.7, 1.4))
    long = int(rng.integers(1000, 2501))
    return (long, int(long * 0.75)) if rng.random() < 0.5 else (int(long * 0.75), long)


def synth_jpeg(seed: int) -> bytes:
    """One JPEG: a random crop of a real photograph, scaled to an ImageNet size, flipped and colour-jittered."""
    rng = np.random.default_rng(seed)
    src = photos()[SOURCES[int(rng.integers(len(SOURCES)))]]
    W, H = image_size(rng)
    scale = rng.uniform(0.25, 1.0)
    cw = max(16, int(src.width * np.sqrt(scale)))
    ch = max(16, min(src.height, int(cw * H / W)))
    cw = min(cw, src.width)
    x0, y0 = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
    img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def _write(job: tuple[str, int]) -> int:
    path, seed = job
    data = synth_jpeg(seed)
    Path(path).write_bytes(data)
    return len(data)


def oddities(root: Path, wnid: str, seed: int) -> list[Path]:
    """The files a real ImageNet copy can hold besides good JPEGs, in val/<wnid>/ (ImageNet's own train set holds
    22 CMYK JPEGs and a PNG named .JPEG; copies pick up truncated and empty files)."""
    folder = root / "val" / wnid
    good = Image.open(io.BytesIO(synth_jpeg(seed)))
    made = []
    for name, save in [
        ("odd_cmyk.JPEG", lambda p: good.convert("CMYK").save(p, "JPEG")),
        ("odd_grayscale.JPEG", lambda p: good.convert("L").save(p, "JPEG")),
        ("odd_png_named_jpeg.JPEG", lambda p: good.save(p, "PNG")),
        ("odd_truncated.JPEG", lambda p: p.write_bytes(synth_jpeg(seed + 1)[:2000])),
        ("odd_empty.JPEG", lambda p: p.write_bytes(b"")),
    ]:
        save(folder / name)
        made.append(folder / name)
    return made


UNREADABLE_ODDITIES = 2  # the truncated and the empty file: skipped and counted; the other three are read


def write_tree(root: Path, classes: int, train_per_class: int, val_per_class: int, seed: int,
               workers: int = 1) -> dict:
    """The ImageNet-shaped tree under root; returns its counts and bytes."""
    from ..data.imagenet import wnids as imagenet_wnids

    wnids = imagenet_wnids()[:classes]
    jobs = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # one seed per file, from (seed, split, class, index): the tree is the same whatever the order
                file_seed = int(np.random.SeedSequence([seed, split == "val", c, i]).generate_state(1)[0])
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c:04d}{i:04d}.JPEG"
                jobs.append((str(folder / name), file_seed))
    start = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write, jobs, chunksize=64))
    else:
        sizes = [_write(j) for j in jobs]
    odd = oddities(root, wnids[0], seed)
    return {"classes": classes, "train_images": classes * train_per_class,
            "val_images": classes * val_per_class + len(odd), "oddities": len(odd), "jpeg_bytes": int(sum(sizes)),
            "write_seconds": time.perf_counter() - start}


def small_models(names: list[str] | None = None) -> dict:
    """The full profiles with every model shrunk (one block per tower, narrow towers; images at their real 224
    pixels, 80 templates × the classes present): what a CPU gets through in minutes, as `--set` assignments
    (SUITE.KEY: value) — each suite's own REHEARSAL declaration (suites/*.py)."""
    from ..run.suites import load_suite, suite_names

    return {f"{name}.{k}": v for name in names or suite_names()
            for k, v in getattr(load_suite(name), "REHEARSAL", {}).items()}


# --------------------------------------------------------------------------------------------- checkpoints
def _full_specs(assignments: dict) -> dict[str, dict]:
    """Each suite's full-profile config with the --set overrides applied."""
    from ..run.suites import apply_overrides, load_suite, overrides_for, suite_names

    configs = {}
    for name in suite_names():
        config = load_suite(name).get_config("full")
        configs[name] = apply_overrides(config, overrides_for(name, config, assignments), name)
    return configs


def write_checkpoints(root: Path, assignments: dict, imagenet_dir: Path, suites: list[str] | None = None) -> dict:
    from .. import models

    """A checkpoint for every model the full profiles name (as --set shapes them), and the overrides that point
    the full profiles at them and at the tree: {suite: {key: value}}."""
    configs = _full_specs(assignments)
    wdir = root / "weights"
    wdir.mkdir(parents=True, exist_ok=True)
    written: dict[tuple, Path] = {}

    def with_file(declared, weights=None) -> dict:
        """The declaration with its weights replaced by a checkpoint of its own initialisation, in its library's
        format (harness.models.save_random), written once per architecture and kwargs."""
        spec = models.parse(declared, weights)
        key = (spec.string, json.dumps(spec.kwargs, sort_keys=True))
        if key not in written:
            stem = spec.name.replace("/", "_") + (f"-{len(written)}" if spec.kwargs else "")
            written[key] = models.save_random(spec, wdir / stem)
        out = dict(declared) if isinstance(declared, dict) else {"model": declared}
        out["model"] = spec.string  # an open_clip tag in the name would name other weights than the file's
        out.setdefault("id", spec.id)
        return {**out, "weights": str(written[key])}

    from ..run.suites import load_suite

    overrides: dict[str, dict] = {}
    for suite in suites or list(configs):
        declared = load_suite(suite)  # which keys name models, and how its data is pointed at the tree
        config, mine = configs[suite], {}
        for key in getattr(declared, "MODEL_KEYS", []):
            node = config
            for part in key.split("."):
                node = node[part]
            weights = config.get(declared.WEIGHTS_KEY) if "." not in key and hasattr(declared, "WEIGHTS_KEY") \
                else None
            mine[key] = [with_file(m, weights) if models.savable(m) else m for m in node]
        overrides[suite] = {**declared.rehearsal_data(str(imagenet_dir)), **mine}
    for key, value in assignments.items():  # the --set overrides stay in force for the run
        suite, _, rest = key.partition(".")
        if suite in overrides and rest not in overrides[suite]:
            overrides[suite][rest] = value
    return {"overrides": overrides, "checkpoints": len(written),
            "checkpoint_bytes": int(sum(p.stat().st_size for p in written.values()))}


def main(argv: list[str] | None = None) -> int:
    from ..run.suites import parse_assignments
    from .args import Parser

    p = Parser(prog="python -m harness rehearsal", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="where the tree, the weights and overrides.json are written")
    p.add_argument("--classes", type=int, default=1000, help="how many of ImageNet's classes (the first N)")
    p.add_argument("--train-per-class", type=int, default=2)
    p.add_argument("--val-per-class", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes writing JPEGs")
    p.add_argument("--set", action="append", default=[], metavar="SUITE.KEY=VALUE", dest="assignments",
                   help="shape the full profiles' models before their checkpoints are written (as for `run`)")
    p.add_argument("--no-weights", action="store_true", help="write the image tree only")
    p.add_argument("--suites", default="agreement,data_scale,linear_probe,zero_shot",
                   help="whose full-profile models get checkpoints and overrides (comma-separated)")
    args = p.parse_args(argv)
    if not 1 <= args.classes <= 1000:
        from ..infra.suite import ConfigError

        raise ConfigError(f"--classes {args.classes}: ImageNet has 1,000 classes; choose 1 to 1000")
    root = args.dir.resolve()
    stats = write_tree(root / "imagenet", args.classes, args.train_per_class, args.val_per_class, args.seed,
                       args.workers)
    print(f"rehearsal: {stats['train_images']:,} train + {stats['val_images']:,} val images "
          f"({stats['jpeg_bytes'] / 2**20:.1f} MiB of JPEG) in {stats['write_seconds']:.1f} s -> {root / 'imagenet'}")
    if not args.no_weights:
        ck = write_checkpoints(root, parse_assignments(args.assignments), root / "imagenet",
                               [x.strip() for x in args.suites.split(",") if x.strip()])
        (root / "overrides.json").write_text(json.dumps(ck["overrides"], indent=1) + "\n")
        print(f"rehearsal: {ck['checkpoints']} checkpoints ({ck['checkpoint_bytes'] / 2**30:.2f} GiB) in "
              f"{root / 'weights'}; run the full profile with\n"
              f"    python -m harness run --profile full --overrides {root / 'overrides.json'}")
    return 0

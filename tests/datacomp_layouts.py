"""DataComp's tasks written as DataComp's download leaves them, with the peers' own writers (tests/test_datacomp.py,
tests/test_datacomp_parity.py).

- A webdataset task: root/wds_<task>_test/ as download_evalsets.py fills it (classnames.txt,
  zeroshot_classification_templates.txt, test/nshards.txt, test/<i>.tar). The shards are written by webdataset's
  own ShardWriter with the sample keys of clip_benchmark's convert_dataset ("s%07d"), each image in the format asked
  for (webp lossless as convert_dataset writes it, png, jpg), its label as .cls and, for the WILDS and fairness tasks,
  its metadata row as .npy; the text files as convert_dataset prints them.
- An nlphuji task: root/hf_cache/ as `datasets.load_dataset("nlphuji/<name>", split="test", cache_dir=...)`
  leaves it — written by datasets' own builder (a GeneratorBasedBuilder, which is what a loading script is, under
  the repository's id and config "TEST"), read back by datasets' own load_dataset in the tests.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from harness.data import datacomp

PIL_FORMATS = {"webp": dict(format="webp", lossless=True), "png": dict(format="png"), "jpg": dict(format="jpeg")}


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **PIL_FORMATS[fmt])
    return buf.getvalue()


def images(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    """Varied small RGB images (noise, flat colours, bars, ramps), so that a random model's predictions vary."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            a = np.full((h, w, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        elif kind == 2:
            a = np.zeros((h, w, 3), np.uint8)
            a[:, : rng.integers(5, w - 3)] = rng.integers(0, 255, 3)
        else:
            a = (np.linspace(0, 255, w)[None, :, None] * rng.random(3)).astype(np.uint8).repeat(h, 0)
        out.append(Image.fromarray(a))
    return out


def write_wds(root: Path, key: str, pictures: list, labels: list[int], classes: list[str],
              templates: tuple[str, ...] = ("a photo of a {c}.", "itap of a {c}."), formats=("webp",),
              metadata: np.ndarray | None = None, per_shard: int = 10) -> Path:
    """A webdataset task as download_evalsets.py leaves it; sample i's image in formats[i % len(formats)]; a
    picture given as bytes is written as it is (a damaged file, say)."""
    import webdataset

    folder = root / datacomp.task(key).folder
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    with webdataset.ShardWriter(str(folder / "test" / "%d.tar"), maxcount=per_shard) as sink:
        sink.verbose = 0
        for i, (picture, label) in enumerate(zip(pictures, labels)):
            fmt = formats[i % len(formats)]
            sample = {"__key__": f"s{i:07d}",  # clip_benchmark's convert_dataset: "s%07d" % index
                      fmt: picture if isinstance(picture, bytes) else encode(picture, fmt), "cls": int(label)}
            if metadata is not None:
                sample["npy"] = np.asarray(metadata[i], dtype=np.int64)
            sink.write(sample)
        shards = sink.shard
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    return folder


RETRIEVAL_FEATURES = datasets.Features({"image": datasets.Image(),
                                        "caption": datasets.Sequence(datasets.Value("string"))})
WINOGAVIL_FEATURES = datasets.Features({"candidate_images": datasets.Sequence(datasets.Image()),
                                        "cue": datasets.Value("string"),
                                        "candidates": datasets.Sequence(datasets.Value("string")),
                                        "associations": datasets.Sequence(datasets.Value("string"))})


def write_hf_cache(root: Path, key: str, rows: dict, features: datasets.Features) -> Path:
    """An nlphuji task in root/hf_cache as datasets caches what load_dataset("nlphuji/<name>", split="test",
    cache_dir=root/"hf_cache") built: written by datasets' own GeneratorBasedBuilder."""
    name = datasets.Split("test")
    n = len(next(iter(rows.values())))

    class LoadingScript(datasets.GeneratorBasedBuilder):
        BUILDER_CONFIGS = [datasets.BuilderConfig(name="TEST", version=datasets.Version("1.1.0"))]

        def _info(self):
            return datasets.DatasetInfo(features=features)

        def _split_generators(self, dl_manager):
            return [datasets.SplitGenerator(name=name, gen_kwargs={})]

        def _generate_examples(self):
            for i in range(n):
                yield i, {k: v[i] for k, v in rows.items()}

    t = datacomp.task(key)
    builder = LoadingScript(cache_dir=str(root / "hf_cache"), dataset_name=t.folder, repo_id=t.hub_id,
                            config_name="TEST", hash="0123456789abcdef")
    builder.download_and_prepare()
    return root / "hf_cache"


def write_parquet_export(root: Path, key: str, rows: dict, features: datasets.Features) -> Path:
    """An nlphuji task as its parquet export (refs/convert/parquet) under root/<name>/TEST/test/."""
    path = root / datacomp.task(key).folder / "TEST" / "test" / "0000.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(path)
    return path


def retrieval_rows(pictures: list, captions_per_image: int = 5) -> dict:
    return {"image": list(pictures),
            "caption": [[f"image {i} caption {j}" for j in range(captions_per_image)] for i in range(len(pictures))]}


def winogavil_rows(n: int, seed: int = 1) -> dict:
    """Instances with 5, 6, 10 and 12 candidates (the metric keeps 10 and 12), 2 or 3 associations each."""
    rng = np.random.default_rng(seed)
    rows = {"candidate_images": [], "cue": [], "candidates": [], "associations": []}
    cues = ["apple", "dog", "ice", "tree", "orange", "sun", "umbrella", "night"]
    for i in range(n):
        k = (5, 6, 10, 12)[i % 4]
        rows["candidate_images"].append(images(k, seed=int(rng.integers(1 << 30)), size=(24, 24)))
        rows["cue"].append(cues[i % len(cues)])
        rows["candidates"].append([f"c{j}" for j in range(k)])
        rows["associations"].append([f"c{j}" for j in sorted(rng.choice(k, 2 + i % 2, replace=False))])
    return rows

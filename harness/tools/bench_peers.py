"""`python -m harness bench --parts peers`: the harness beside CLIP_benchmark on the same work, on this machine.

The same open_clip model (ViT-B-32, open_clip's initialisation after torch.manual_seed(0): no weights are
downloadable here), the same Fashion-MNIST test images (a class-balanced subset) through the model's own
preprocessing, the same class names and templates (the catalog's), float32 on both sides (amp=False; CLIP_benchmark
1.4.0's autocast is torch.cuda.amp's, a no-op on a CPU). Zero-shot classification and retrieval, timed in
interleaved rounds:
  - clip_benchmark.metrics.zeroshot_classification.evaluate (1.4.0, DataComp's pin) over a DataLoader — every
    call builds the classifier and decodes and transforms the images again;
  - harness.evaluate, first call (its kept images and classifiers cleared first) and repeated call (as in a
    training loop whose weights did not change: the images kept, the classifier reused, the image features
    computed again).
Retrieval: the first half of those images with two captions each, written once in the catalog's MSCOCO layout for
the harness and given to CLIP_benchmark's zeroshot_retrieval.evaluate as (image, captions) pairs; the harness keeps
the captions' embeddings like a classifier. Not measured: the linear probe (clip_benchmark 1.4.0's probe asserts
device == 'cuda').
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd
import torch


class _Images(torch.utils.data.Dataset):
    """(preprocessed image, label) of the chosen rows, as CLIP_benchmark's loaders give them."""

    def __init__(self, data, rows: np.ndarray, preprocess):
        self.data, self.rows, self.preprocess = data, rows, preprocess
        self.classes = list(data.classnames)  # CLIP_benchmark reads dataset.classes (top-5 when >= 5 classes)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from PIL import Image

        row = self.data.dataset[int(self.rows[i])]
        image = row["image"]
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        return self.preprocess(image.convert("RGB")), int(row["label"])


def bench_peers(device: torch.device, per_class: int = 50, rounds: int = 3, model_name: str = "ViT-B-32",
                batch_size: int = 256) -> pd.DataFrame:
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification as cb

    from .. import data, evaluation
    from ..data.images import balanced_subset
    from ..models.open_clip import transform

    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None).to(device).eval()
    preprocess, tokenizer = transform(model), open_clip.get_tokenizer(model_name)
    spec = {"name": "fashion_mnist", "test_per_class": per_class}
    test = data.load(spec, "test")
    rows = balanced_subset(test.labels, per_class, seed=0)
    names, templates = test.classnames, test.templates
    loader = torch.utils.data.DataLoader(_Images(test, rows, preprocess), batch_size=batch_size, num_workers=0)

    peer_templates = [t.replace("{}", "{c}") for t in templates]  # CLIP_benchmark formats template.format(c=name)

    def peer():
        return cb.evaluate(model, loader, tokenizer, names, peer_templates, str(device), amp=False)

    def ours(first: bool):
        if first:
            evaluation.clear()
        return evaluation.evaluate(model, [spec], tokenizer=tokenizer, device=device, batch_size=batch_size).iloc[0]

    peer_keys = {"top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall"}
    times, results = _interleaved(peer, ours, rounds, peer_keys)
    common = {"model": f"open_clip {model_name}", "images": len(rows), "classes": len(names),
              "templates": len(templates), "rounds": rounds}
    table = _rows("zero-shot classification", times, results, common)
    table += _retrieval(model, preprocess, tokenizer, test, rows[: max(len(rows) // 2, 2)], names, device, rounds,
                        batch_size, {**common, "classes": None, "templates": None})
    return pd.DataFrame(table)


def _interleaved(peer, ours, rounds: int, peer_keys: dict[str, str]) -> tuple[dict, dict]:
    """({label: seconds of each round}, {label: metrics of the last round}) for CLIP_benchmark's call, the harness's
    first call (ours(True): its kept images and classifiers cleared) and its repeated call, run in interleaved
    rounds after an untimed warm-up of both (a process's first calls import and allocate). peer_keys: the harness's
    metric name -> CLIP_benchmark's (a fraction, reported here in % like the harness's)."""
    ours(True)
    peer()
    times: dict[str, list[float]] = {"clip_benchmark": [], "harness first call": [], "harness repeated call": []}
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for label, fn in (("clip_benchmark", peer), ("harness first call", lambda: ours(True)),
                          ("harness repeated call", lambda: ours(False))):
            t0 = time.perf_counter()
            out = fn()
            times[label].append(time.perf_counter() - t0)
            results[label] = ({ours_key: 100 * out[key] for ours_key, key in peer_keys.items()}
                              if label == "clip_benchmark" else {k: float(out[k]) for k in peer_keys})
    return times, results


def _rows(task: str, times: dict, results: dict, common: dict) -> list[dict]:
    peer_s = statistics.median(times["clip_benchmark"])
    return [{"task": task, "implementation": label, **common, "seconds": statistics.median(seconds),
             "seconds_min": min(seconds), "seconds_max": max(seconds),
             "speed_vs_clip_benchmark": peer_s / statistics.median(seconds), **results[label]}
            for label, seconds in times.items()]


class _Pairs(torch.utils.data.Dataset):
    """(preprocessed image, its captions), as CLIP_benchmark's retrieval loaders give them."""

    def __init__(self, pictures: list, captions: list[list[str]], preprocess):
        self.pictures, self.captions, self.preprocess = pictures, captions, preprocess

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, i: int):
        return self.preprocess(self.pictures[i]), self.captions[i]


def _retrieval(model, preprocess, tokenizer, test, rows: np.ndarray, names: list[str], device, rounds: int,
               batch_size: int, common: dict) -> list[dict]:
    """Image–text retrieval on the first half of the images, two captions each (its class named two ways), written
    once as a local copy in the catalog's MSCOCO layout (nlphuji's parquet export, TEST/test/*.parquet) for the
    harness and given to CLIP_benchmark as (image, captions) pairs with its own collate function."""
    import tempfile
    from pathlib import Path

    import datasets
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval as cb
    from PIL import Image

    from .. import evaluation

    pictures = [Image.fromarray(np.asarray(test.dataset[int(r)]["image"], dtype=np.uint8)).convert("RGB")
                for r in rows]
    captions = [[f"a photo of a {names[test.labels[r]]}.", f"a {names[test.labels[r]]}, in black and white."]
                for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "TEST" / "test"
        folder.mkdir(parents=True)
        features = datasets.Features({"image": datasets.Image(),
                                      "caption": datasets.Sequence(datasets.Value("string"))})
        datasets.Dataset.from_dict({"image": pictures, "caption": captions}, features=features).to_parquet(
            folder / "0000.parquet")
        spec = {"name": "mscoco", "root": tmp}
        loader = torch.utils.data.DataLoader(_Pairs(pictures, captions, preprocess), batch_size=batch_size,
                                             collate_fn=image_captions_collate_fn, num_workers=0)

        def peer():
            return cb.evaluate(model, loader, tokenizer, str(device), amp=False, recall_k_list=[1, 5, 10])

        def ours(first: bool):
            if first:
                evaluation.clear()
            return evaluation.evaluate(model, [spec], tokenizer=tokenizer, device=device,
                                       batch_size=batch_size).iloc[0]

        peer_keys = {"image_to_text_R@1": "text_retrieval_recall@1", "text_to_image_R@1": "image_retrieval_recall@1",
                     "text_to_image_R@5": "image_retrieval_recall@5"}
        times, results = _interleaved(peer, ours, rounds, peer_keys)
    return _rows("zero-shot retrieval", times, results, {**common, "images": len(rows)})

"""`python -m harness bench --parts peers`: the harness beside CLIP_benchmark on the same work, on this machine.

The same open_clip model (ViT-B-32, open_clip's initialisation after torch.manual_seed(0): no weights are
downloadable here), the same Fashion-MNIST test images (a class-balanced subset) through the model's own
preprocessing, the same class names and templates (the catalog's), float32 on both sides (amp=False; CLIP_benchmark
1.4.0's autocast is torch.cuda.amp's, a no-op on a CPU). Zero-shot classification, timed in interleaved rounds:
  - clip_benchmark.metrics.zeroshot_classification.evaluate (1.4.0, DataComp's pin) over a DataLoader — every
    call builds the classifier and decodes and transforms the images again;
  - harness.evaluate, first call (its kept images and classifiers cleared first) and repeated call (as in a
    training loop whose weights did not change: the images kept, the classifier reused, the image features
    computed again).
Not measured here: retrieval (the embedded data has no captions both tools read) and the linear probe
(clip_benchmark 1.4.0's probe asserts device == 'cuda').
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

    ours(True)  # warm-up, untimed: both tools' first calls in a process import and allocate
    peer()
    times: dict[str, list[float]] = {"clip_benchmark": [], "harness first call": [], "harness repeated call": []}
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for label, fn in (("clip_benchmark", peer), ("harness first call", lambda: ours(True)),
                          ("harness repeated call", lambda: ours(False))):
            t0 = time.perf_counter()
            out = fn()
            times[label].append(time.perf_counter() - t0)
            results[label] = ({"top1": 100 * out["acc1"], "top5": 100 * out["acc5"],
                               "mean_per_class_recall": 100 * out["mean_per_class_recall"]} if label ==
                              "clip_benchmark" else {k: float(out[k]) for k in ("top1", "top5",
                                                                                  "mean_per_class_recall")})
    peer_s = statistics.median(times["clip_benchmark"])
    table = []
    for label, seconds in times.items():
        median = statistics.median(seconds)
        table.append({"task": "zero-shot classification", "implementation": label, "model": f"open_clip {model_name}",
                      "images": len(rows), "classes": len(names), "templates": len(templates), "rounds": rounds,
                      "seconds": median, "seconds_min": min(seconds), "seconds_max": max(seconds),
                      "speed_vs_clip_benchmark": peer_s / median, **results[label]})
    return pd.DataFrame(table)

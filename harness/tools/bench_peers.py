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
the captions' embeddings like a classifier.
Linear probe: the same features for both — Fashion-MNIST pixels (5,000 class-balanced training and 5,000 test
images, 784 values each, L2-normalised as CLIP_benchmark's Featurizer normalises an embedding; a pixel "model",
because a random ViT-B-32's features are not worth a probe and 10,000 of them cost ~11 min here) and the same
validation split (10% of train, the harness's own draw):
  - clip_benchmark.metrics.linear_probe.evaluate of clip_benchmark 1.6.2, the newest release, whose probe sweeps
    the weight decay (1.4.0's trains once at weight decay 0), at its command line's defaults (AdamW, lr 0.1, 10
    epochs, batch 64, amp off here): 7 weight decays from 1e-6 to 1e2, then 3 around the best at each of 4 halving
    spans (19 trainings), and a final training on train + validation; its feature files written before the
    clock starts, as its own featurisation leaves them. It runs in a child process (1.6.2 installed by nox beside
    the environment, in <venv>/peers, so that DataComp's 1.4.0 stays the one the parity tests import). Its code
    asserts device == 'cuda' and calls .cuda(): on a machine without a GPU the child points those calls at the
    CPU (Tensor.cuda, Module.cuda and .to('cuda') return CPU tensors; its code is otherwise unchanged);
  - harness.methods.probe.linear_probe: L-BFGS, its λ sweep and final fit (what the linear_probe suite runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

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
    table += probe(device, 10 * per_class, rounds)
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


# ------------------------------------------------------------------------------------------ linear probe
PROBE_PEER = "clip_benchmark==1.6.2"  # installed by noxfile.py into probe_peer_path(), without its dependencies


def probe_peer_path() -> Path:
    """Where the probe's CLIP_benchmark lives: beside the environment, not in it (the environment's own
    clip_benchmark is DataComp's pin, 1.4.0)."""
    return Path(sys.prefix) / "peers" / PROBE_PEER.replace("==", "-")


def check_probe_peer() -> Path:
    """probe_peer_path(), or a ConfigError saying how to install what is missing there."""
    from ..infra.suite import ConfigError

    path = probe_peer_path()
    if not (path / "clip_benchmark" / "metrics" / "linear_probe.py").is_file():
        raise ConfigError(f"bench --parts peers: {PROBE_PEER} (the linear probe's peer) is not at {path}: run it "
                          f"through `nox -s bench -- --parts peers`, or `pip install --no-deps --target {path} "
                          f"{PROBE_PEER}`")
    return path


def probe(device: torch.device, per_class: int = 500, rounds: int = 3) -> list[dict]:
    """The linear-probe rows, measured in a child process whose clip_benchmark is PROBE_PEER."""
    path = check_probe_peer()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}
        subprocess.run([sys.executable, "-m", "harness.tools.bench_peers", str(device), str(per_class), str(rounds),
                        str(out)], env=env, check=True)
        return json.loads(out.read_text())


@contextlib.contextmanager
def _cuda_on_cpu():
    """CLIP_benchmark's probe written for a GPU run on the CPU: .cuda() of tensors and modules and .to("cuda")
    give CPU tensors for as long as this lasts. Nothing else of torch changes."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        return saved[2](self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to = saved


def _feature_sets(per_class: int) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """The probe's two feature sets, each row L2-normalised as CLIP_benchmark's Featurizer normalises an embedding:
    class-balanced Fashion-MNIST pixels (784 values, 10 classes), and bench.probe_feature_sets' synthetic 512-d
    embedding of 100 classes (per_class < 500: its quick size)."""
    from .. import data
    from ..data.images import balanced_subset, grayscale_tensors
    from .bench import probe_feature_sets

    pixels = []
    for split in ("train", "test"):
        images = data.load("fashion_mnist", split)
        x, y = grayscale_tensors(images, balanced_subset(images.labels, per_class, seed=0))
        pixels += [torch.nn.functional.normalize(x.flatten(1), dim=-1), y]
    name, xtr, ytr, xte, yte = probe_feature_sets(quick=per_class < 500)[1]
    synthetic = [torch.nn.functional.normalize(torch.as_tensor(xtr, dtype=torch.float32), dim=-1),
                 torch.as_tensor(ytr), torch.nn.functional.normalize(torch.as_tensor(xte, dtype=torch.float32),
                                                                     dim=-1), torch.as_tensor(yte)]
    return [("pixels (L2-normalised)", tuple(pixels)), (f"{name} (L2-normalised)", tuple(synthetic))]


def _probe_child(device: torch.device, per_class: int, rounds: int) -> list[dict]:
    """Both probes on the same features, in interleaved rounds after an untimed warm-up of each, on each feature
    set."""
    from clip_benchmark.metrics import linear_probe as cb

    from ..methods.probe import linear_probe, validation_split

    if not Path(cb.__file__).resolve().is_relative_to(probe_peer_path().resolve()):
        raise RuntimeError(f"the probe's peer should be {PROBE_PEER} from {probe_peer_path()}, not {cb.__file__}")
    table = []
    for set_name, features in _feature_sets(per_class):
        table += _probe_one(cb, linear_probe, validation_split, device, set_name, features, rounds)
    return table


def _probe_one(cb, linear_probe, validation_split, device, set_name: str, features, rounds: int) -> list[dict]:
    """_probe_child's rows for one feature set."""
    shim = _cuda_on_cpu if device.type == "cpu" else contextlib.nullcontext
    xtr, ytr, xte, yte = features
    classes = int(max(ytr.max(), yte.max()) + 1)
    val, fit = validation_split(len(xtr))  # linear_probe's own split, given to CLIP_benchmark as its val split
    with tempfile.TemporaryDirectory() as root:
        def write(model_id: str, rows) -> None:  # the files CLIP_benchmark's featurisation leaves
            folder = Path(root) / model_id
            folder.mkdir()
            for split, x, y in (("train", xtr[rows], ytr[rows]), ("val", xtr[val], ytr[val]),
                                ("test", xte, yte)):
                torch.save(x.clone(), folder / f"features_{split}.pt")
                torch.save(y.clone(), folder / f"targets_{split}.pt")

        # the warm-up's training rows hold every class (CLIP_benchmark sizes its head from them)
        write("warm-up", np.concatenate([fit[(ytr[fit] == c).numpy()][:2] for c in range(classes)]))
        write("features", fit)

        def peer(model_id: str = "features", epochs: int = 10):
            torch.manual_seed(0)  # its evaluate draws a permutation from the global generator
            # evaluate(model, train_dataloader, dataloader, fewshot_k, batch_size, num_workers, lr, epochs,
            # model_id, seed, feature_root, device, val_dataloader, normalize, amp): the loaders are read only
            # to featurise, which the files make it skip; val_dataloader not None turns the weight-decay sweep
            # on; amp as its command line's default on a GPU (--amp, on), off on a CPU
            with shim(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return cb.evaluate(torch.nn.Identity(), None, None, -1, 64, 0, 0.1, epochs, model_id, 0, root,
                                   "cuda", val_dataloader=[], normalize=True, amp=device.type == "cuda")

        def ours(n: int = len(xtr), **kwargs):
            return linear_probe(xtr[:n].double().numpy(), ytr[:n].numpy(), xte.double().numpy(), yte.numpy(),
                                num_classes=classes, device=device, **kwargs)

        peer("warm-up", 1)
        with warnings.catch_warnings():  # 5 iterations: not converged, on purpose
            warnings.simplefilter("ignore")
            ours(110, max_iter=5, sweep_max_iter=5)
        times: dict[str, list[float]] = {"clip_benchmark": [], "harness": []}
        for _ in range(rounds):
            t0 = time.perf_counter()
            theirs = peer()
            times["clip_benchmark"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mine = ours()
            times["harness"].append(time.perf_counter() - t0)
    results = {"clip_benchmark": {"top1": 100 * theirs["lp_acc1"], "top5": 100 * theirs["lp_acc5"],
                                  "mean_per_class_recall": 100 * theirs["lp_mean_per_class_recall"],
                                  "regularisation": f"weight decay {theirs['weight_decay']:.3g}",
                                  "work": "AdamW, weight-decay sweep (19 trainings) + final training"},
               "harness": {"top1": mine.top1, "top5": mine.top5,
                           "mean_per_class_recall": mine.mean_per_class_recall,
                           "regularisation": f"λ {mine.strength:.3g}",
                           "work": f"L-BFGS, λ sweep ({len(mine.sweep)} fits) + final fit"}}
    common = {"model": set_name, "images": len(yte), "classes": classes, "rounds": rounds,
              "train_images": len(ytr), "feature_dim": xtr.shape[1]}
    return _rows("linear probe", times, results, common)


if __name__ == "__main__":  # the probe's child process: DEVICE PER_CLASS ROUNDS OUT.json
    _device, _per_class, _rounds, _out = sys.argv[1:]
    _table = _probe_child(torch.device(_device), int(_per_class), int(_rounds))
    Path(_out).write_text(json.dumps(_table))

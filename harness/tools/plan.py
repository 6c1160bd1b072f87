"""The full profile's scale plan, in measured numbers: every figure is a rate measured here (or read from a GPU
benchmark table this project's code wrote) times a size.

    python -m harness plan [--out results] [--gpu-bench results/gpu/bench_models.csv] [--quick]

Rates measured on this machine: JPEG decode + resize + crop images/s on one core (rehearsal JPEGs of ImageNet's
sizes); the forward images/s of each full-profile image tower; the text tower's texts/s; the feature-cache bytes
per image; the linear probe's seconds per L-BFGS evaluation at 1,000 classes as N and D grow; a training step of
each data-scale full-profile architecture. GPU rates come only from this repository's own results: the
bench_models.csv that `python -m harness gpu-check` (or `bench --device cuda`) wrote under results/ (by default
results/gpu/bench_models.csv; image towers only). Where no GPU rate was measured, the plan says "not measured".
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..infra import results
from .args import Parser
from .bench import decode_rate

TRAIN, VAL, CLASSES = 1_281_167, 50_000, 1000
TEMPLATES = 80


def _time(fn, reps: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def towers() -> list:
    """The image towers the full profiles of linear_probe and zero_shot name (harness.models specs, each
    architecture once: the rates are the architecture's, measured with random weights)."""
    from .. import models
    from ..infra.suite import load_suite

    seen = {}
    for suite in ("linear_probe", "zero_shot"):
        for declared in load_suite(suite).get_config("full")["models"]:
            spec = models.parse(declared)
            seen.setdefault((spec.string, str(spec.kwargs)), spec)
    return list(seen.values())


def tower_rates(quick: bool) -> pd.DataFrame:
    """Forward images/s of each tower's image encoder (what feature extraction runs), batch 8, on this CPU."""
    from .. import models

    rows = []
    for spec in towers()[: 2 if quick else None]:
        model = models.resolve({"model": spec.string, "kwargs": spec.kwargs})
        x = torch.randn(8, *model.input_size)
        with torch.inference_mode():
            dim = model.encode_image(x[:1]).shape[-1]
            seconds = _time(lambda m=model, x=x: m.encode_image(x), reps=1 if "L-14" in spec.name else 2)
        rows.append({"model": spec.id, "architecture": spec.string, "feature_dim": dim,
                     "with_reference": spec.with_reference, "clip_like": model.clip_like,
                     "cpu_images_per_s": 8 / seconds})
        del model
    return pd.DataFrame(rows)


def text_rate() -> float:
    """Texts/s of ViT-B-32's text tower (77 tokens), batch 64: the zero-shot classifier's cost per text."""
    from .. import models

    model = models.resolve("open_clip:ViT-B-32")
    tokens = model.tokenizer(["a photo of a tench."] * 64)
    with torch.inference_mode():
        return 64 / _time(lambda: model.encode_text(tokens), reps=2)


def feature_bytes(dim: int) -> float:
    """Bytes per image of a cached feature chunk of 4,096 images (features, label, row), measured on disk."""
    from ..infra import cache

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chunk.safetensors"
        n = 4096
        cache.save_tensors(path, {"features": np.zeros((n, dim), np.float32), "labels": np.zeros(n, np.int64),
                                  "indices": np.zeros(n, np.int64), "skipped_rows": np.zeros(0, np.int64)},
                           {"skipped": []})
        return path.stat().st_size / n


def probe_rates(quick: bool) -> pd.DataFrame:
    """Seconds per objective evaluation (one L-BFGS step costs about one) at 1,000 classes, float32."""
    import torch.nn.functional as F

    from ..methods.probe import BLOCK_ROWS

    rows = []
    sizes = [(8192, 512), (8192, 1024)] if quick else [(8192, 512), (8192, 1024), (32768, 512), (32768, 1024)]
    for n, d in sizes:
        x = torch.randn(n, d)
        y = torch.randint(0, CLASSES, (n,))
        Wt, b = torch.zeros(CLASSES, d), torch.zeros(CLASSES)

        def evaluate(x=x, y=y, Wt=Wt, b=b, n=n):
            g = torch.zeros_like(Wt)
            for s in range(0, n, BLOCK_ROWS):
                xb, yb = x[s: s + BLOCK_ROWS], y[s: s + BLOCK_ROWS]
                logits = torch.addmm(b, xb, Wt.T)
                F.cross_entropy(logits, yb, reduction="sum")
                R = logits.softmax(1)
                g.addmm_(R.T, xb)

        rows.append({"N": n, "D": d, "C": CLASSES, "seconds_per_step": _time(evaluate, reps=2)})
    df = pd.DataFrame(rows)
    df["ns_per_NDC"] = 1e9 * df["seconds_per_step"] / (df["N"] * df["D"] * df["C"])
    return df


def train_rates() -> pd.DataFrame:
    """Steps/s of the data-scale full profile's architectures at batch 256, 64×64, on this CPU (2 steps)."""
    from ..infra.suite import load_suite
    from ..methods.scale_runs import build_architecture
    from ..methods.train import Recipe, train

    cfg = load_suite("data_scale").get_config("full")
    rows = []
    for arch in cfg["architectures"]:
        model = build_architecture(arch)
        x, y = torch.randn(256, 3, 64, 64), torch.randint(0, 100, (256,))
        stats = train(model, x, y, Recipe(steps=2, batch_size=256), seed=0, desc=arch["id"])
        rows.append({"architecture": arch["id"], "cpu_steps_per_s": 2 / stats["train_seconds"]})
    return pd.DataFrame(rows)


GPU_BENCH = results.REPO_ROOT / "results" / "gpu" / "bench_models.csv"


def read_bench_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A bench_models.csv written by this repository's code under results/, and the device it names. A table from
    anywhere else is refused: the plan's GPU figures are this repository's own measurements or none."""
    from ..infra.suite import ConfigError

    path, own = Path(path).resolve(), (results.REPO_ROOT / "results").resolve()
    if not path.is_relative_to(own) or path.suffix != ".csv":
        raise ConfigError(f"--gpu-bench {path}: the GPU rates must come from a bench_models.csv under {own} "
                          "(written by python -m harness gpu-check or bench --device cuda in this repository)")
    if not path.is_file():
        raise ConfigError(f"--gpu-bench {path}: no such file (python -m harness gpu-check writes "
                          "results/gpu/bench_models.csv on a GPU)")
    df = pd.read_csv(path)
    return df, str(df["device"].iloc[0])


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "not measured"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def plan(quick: bool = False, gpu_bench: Path | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """(stage table, rate table, facts)."""
    cores = torch.get_num_threads()
    decode, jpeg_bytes = decode_rate(60 if quick else 150)
    towers = tower_rates(quick)
    texts = text_rate()
    probe = probe_rates(quick)
    ns_ndc = float(probe["ns_per_NDC"].median())
    train = train_rates()
    gpu, gpu_device, twin_ratio = {}, None, None
    if gpu_bench is not None:
        table, gpu_device = read_bench_table(Path(gpu_bench))
        g = table[table["implementation"] == "library"]
        gpu = dict(zip(g["model"], g["images_per_s"].astype(float)))
        fused = table[table["implementation"] == "reference (fused)"]["ratio_to_library"].astype(float)
        twin_ratio = (fused.min(), fused.max()) if len(fused) else None
    rows = []
    for _, t in towers.iterrows():
        passes = 2 if t["with_reference"] else 1  # library and reference twin each extract their features
        for suite, images in (("linear_probe", TRAIN + VAL), ("zero_shot", VAL)):
            if suite == "zero_shot" and not t["clip_like"]:
                continue
            n = images * passes
            decode_s = n / (decode * cores)  # decoding in DataLoader workers, one per core
            cpu_s = n / t["cpu_images_per_s"] + decode_s  # decoding competes with the model for the same cores
            # the GPU table times the architecture under its timm / open_clip name, without a pretrained tag
            g_rate = gpu.get(t["architecture"].partition(":")[2].split(".")[0], float("nan"))
            gpu_s = max(n / g_rate, n / (decode * 16))  # the GPU machine: 16 cores decoding
            rows.append({"stage": f"{suite}: features of {t['model']}" + (" + reference" if passes == 2 else ""),
                         "size": f"{n:,} images", "rate": f"{t['cpu_images_per_s']:.1f} img/s CPU forward; "
                         f"{decode:.0f} img/s/core decode" + (f"; {g_rate:,.0f} img/s GPU" if g_rate == g_rate else ""),
                         "cpu_seconds": cpu_s, "gpu_seconds": gpu_s, "gpu_x8_seconds": gpu_s / 8,
                         "disk_bytes": n * feature_bytes(int(t["feature_dim"])) if suite == "linear_probe" else 0.0})
    # zero-shot classifiers: 80 templates × 1,000 classes through each open_clip text tower (twice with a twin)
    from .. import models
    from ..infra.suite import load_suite

    zero_shot = [models.parse(m) for m in load_suite("zero_shot").get_config("full")["models"]]
    n_text = TEMPLATES * CLASSES * sum(1 + s.with_reference for s in zero_shot)
    rows.append({"stage": f"zero_shot: classifiers (80 templates × 1,000 classes, {len(zero_shot)} models + twins)",
                 "size": f"{n_text:,} texts", "rate": f"{texts:.0f} texts/s CPU (ViT-B-32's text tower)",
                 "cpu_seconds": n_text / texts, "gpu_seconds": float("nan"), "gpu_x8_seconds": float("nan"),
                 "disk_bytes": 0.0})
    # the probe, per model and twin: a λ sweep (11 fits × ≤ 200 steps on a sample of 100,000 images, the full
    # profile's sweep_max_images) and a final fit on all of train (measured on the default profile: ~430 steps,
    # float32 then float64 at ~2× the cost per step)
    for _, t in towers.iterrows():
        d, probes = int(t["feature_dim"]), 2 if t["with_reference"] else 1
        seconds = probes * ns_ndc * 1e-9 * d * CLASSES * (11 * 200 * 100_000 + 430 * 1.5 * TRAIN)
        rows.append({"stage": f"linear_probe: probe of {t['model']}" + (" + reference" if probes == 2 else ""),
                     "size": f"{TRAIN:,} × {d:,} × {CLASSES:,}", "rate": f"{ns_ndc:.3f} ns per N·D·C per step "
                     "(CPU, float32)", "cpu_seconds": seconds, "gpu_seconds": float("nan"),
                     "gpu_x8_seconds": float("nan"), "disk_bytes": 0.0})
    # data_scale full: ImageNet-100 decoded once at 64×64, 3 seeds × 7 sizes × 2 architectures + timm's ViT
    from ..infra.suite import load_suite

    full = load_suite("data_scale").get_config("full")
    policy, batch, classes = full["step_policy"], full["recipe"]["batch_size"], full["data"]["classes"]
    steps = {a["id"]: len(full["seeds"]) * sum(max(policy["min_steps"],
                                                   math.ceil(policy["epochs"] * classes * n / batch))
                                               for n in a.get("sizes", full["sizes_per_class"]))
             for a in full["architectures"]}
    for _, r in train.iterrows():
        rows.append({"stage": f"data_scale: training {r['architecture']} (all sizes × 3 seeds)",
                     "size": f"{steps[r['architecture']]:,} steps of 256", "rate":
                     f"{r['cpu_steps_per_s']:.2f} steps/s CPU", "cpu_seconds": steps[r["architecture"]] /
                     r["cpu_steps_per_s"], "gpu_seconds": float("nan"), "gpu_x8_seconds": float("nan"),
                     "disk_bytes": 0.0})
    rows.append({"stage": "data_scale: decode ImageNet-100 once at 64×64", "size": "135,000 images",
                 "rate": f"{decode:.0f} img/s/core", "cpu_seconds": 135_000 / (decode * cores),
                 "gpu_seconds": 135_000 / (decode * 16), "gpu_x8_seconds": 135_000 / (decode * 16),
                 "disk_bytes": 0.0})
    stages = pd.DataFrame(rows)
    rates = {"Image towers: forward images/s (float32, batch 8, 224×224)": towers,
             "Linear probe: seconds per objective evaluation (float32, blocks of 1,024 rows)": probe,
             "Data-scale full profile: training steps/s (batch 256, 64×64)": train}
    facts = {"cores": cores, "decode_per_core": decode, "jpeg_bytes": jpeg_bytes, "texts_per_s": texts,
             "ns_per_NDC": ns_ndc, "gpu_source": str(gpu_bench) if gpu else None, "gpu_device": gpu_device,
             "twin_ratio": twin_ratio}
    return stages, rates, facts


def write(out: Path, quick: bool = False, gpu_bench: Path | None = None) -> Path:
    stages, rates, facts = plan(quick, gpu_bench)
    total = {c: stages[c].sum(min_count=1) for c in ("cpu_seconds", "gpu_seconds", "gpu_x8_seconds")}
    show = stages.assign(**{c: stages[c].map(_fmt_time) for c in ("cpu_seconds", "gpu_seconds", "gpu_x8_seconds")},
                         disk=stages["disk_bytes"].map(lambda b: f"{b / 2**30:.1f} GiB" if b else ""))
    prov = results.provenance({"quick": quick, "gpu_bench": str(gpu_bench)}, "cpu", 0)
    twin = facts["twin_ratio"]
    source = Path(facts["gpu_source"]).resolve().relative_to(results.REPO_ROOT) if facts["gpu_source"] else None
    gpu_line = (f"GPU rates: the `library` rows of {source} ({facts['gpu_device']}, bfloat16, written by this "
                "repository's `python -m harness bench --device cuda`); the reference twin is taken to run at the "
                "library's rate" + (f" (its fused path measured there at {twin[0]:.2f}-{twin[1]:.2f}×)" if twin else "")
                + ". Rows without a GPU rate say `not measured`: bench measures image towers only." if source else
                "No GPU benchmark table of this repository's (results/gpu/bench_models.csv): the GPU columns are "
                "not measured.")
    md = [
        "# The full profile at real scale: a plan in measured numbers", "",
        f"Sizes: ImageNet-1k, {TRAIN:,} training and {VAL:,} validation images, {CLASSES:,} classes, "
        f"{TEMPLATES} templates. Written by `python -m harness plan` on {prov['device']} "
        f"(git {prov['git_sha']}, torch {prov['torch']}). Each figure is a measured rate times a size; the rates "
        "are in the second table.", "",
        f"- JPEG decode + resize 248 + crop 224 on one core: **{facts['decode_per_core']:.0f} images/s** "
        f"(rehearsal JPEGs of ImageNet's sizes, mean {facts['jpeg_bytes'] / 1024:.0f} KiB; ImageNet's own average "
        "about 110 KiB, whose decode cost follows the pixel count more than the bytes).",
        f"- CPU machine: {facts['cores']} cores; decoding runs in DataLoader workers on the same cores as the model.",
        f"- {gpu_line}",
        f"- Probe: {facts['ns_per_NDC']:.3f} ns per N·D·C per objective evaluation on this CPU; a fit takes one "
        "evaluation per L-BFGS step (more during line searches). The sweep is capped at 200 steps per strength.",
        "- 8 GPUs under torchrun: extraction is data-parallel (÷8, as the runner shards images); the probe and "
        "the zero-shot classifier are computed by every rank (no ÷8); data_scale splits its 45 training runs by "
        "unit.", "",
        "## Expected wall time and disk, by stage", "",
        results.to_markdown(show, ["stage", "size", "rate", "cpu_seconds", "gpu_seconds", "gpu_x8_seconds", "disk"]),
        f"**Totals** (measured stages only): CPU {_fmt_time(total['cpu_seconds'])}; one GPU "
        f"({facts['gpu_device'] or 'none measured'}) "
        f"{_fmt_time(total['gpu_seconds'] or float('nan'))} of the stages with a GPU rate; eight of them "
        f"{_fmt_time(total['gpu_x8_seconds'] or float('nan'))} of those. Disk for cached features: "
        f"{stages['disk_bytes'].sum() / 2**30:.0f} GiB (float32).", "",
        "## What does not scale, and what changed", "",
        "- The probe's full-batch L-BFGS: a float64 copy of 1.28M × 1,024 features is 10 GiB. Now the features stay "
        "float32 (or float16) in memory and each evaluation converts blocks of 1,024 rows (chunked gradient, "
        "`harness.methods.probe.fit(max_bytes=...)`); the fit runs in float32 and is polished in float64 from that "
        "point; "
        "L-BFGS is preconditioned by the features' second moment, so fewer steps reach the same optimum (tested: "
        "tests/test_linear_probe.py). On the default profile, predictions of round-off twins stay identical, and "
        "results move only where the better-converged λ sweep picks a neighbouring strength; bench_probe compares "
        "the whole procedure with scikit-learn's on the same work.",
        "- The λ sweep: 11 fits × 200 steps over 1.15M images would cost more than the final fit. The full profile "
        "sweeps on a random 100,000 of them (`sweep_max_images`) and carries the chosen strength to the full set at "
        "fixed C = 1/(λN); the default profile's 4,500 fit images are below that limit, so nothing changed there.",
        "- What remains too slow on a CPU: the probe at 1.28M × 768 × 1,000 (each evaluation about half a minute) "
        "and data_scale's 100-epoch training runs; both are GPU work.", "",
        "## Measured rates", "",
        *[f"{title}:\n\n{results.to_markdown(df)}" for title, df in rates.items()],
        "## Produced by", "", results.to_markdown(pd.DataFrame([prov])),
    ]
    path = Path(out) / "full_profile_plan.md"
    results.atomic_write_text(path, "\n".join(md) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m harness plan", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=results.REPO_ROOT / "results")
    p.add_argument("--gpu-bench", type=Path, default=GPU_BENCH if GPU_BENCH.exists() else None,
                   help="a bench_models.csv under results/ written on a GPU by this repository (default: "
                        "results/gpu/bench_models.csv when it exists)")
    p.add_argument("--quick", action="store_true", help="fewer models and sizes (a smoke run)")
    args = p.parse_args(argv)
    if args.gpu_bench is not None:
        read_bench_table(args.gpu_bench)  # refused before any measurement: not this repository's, or no such file
    print(f"plan -> {write(args.out, args.quick, args.gpu_bench)}")
    return 0

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


class Rates:
    """The rates a suite's plan multiplies by its sizes (its evaluator's plan(config, rates)): measured here, when
    first asked for, or read from this repository's GPU table."""

    TRAIN, VAL, CLASSES, TEMPLATES = TRAIN, VAL, CLASSES, TEMPLATES  # ImageNet-1k's sizes

    def __init__(self, quick: bool, gpu_bench: Path | None):
        self.quick, self.cores = quick, torch.get_num_threads()
        self.decode, self.jpeg_bytes = decode_rate(60 if quick else 150)
        self._towers: dict[tuple, dict] = {}
        self._texts = self._probe = None
        self.train = pd.DataFrame()  # steps/s of the training runs a suite measured (data_scale's plan)
        self.gpu, self.gpu_device, self.twin_ratio = {}, None, None
        if gpu_bench is not None:
            table, self.gpu_device = read_bench_table(Path(gpu_bench))
            g = table[table["implementation"] == "library"]
            self.gpu = dict(zip(g["model"], g["images_per_s"].astype(float)))
            fused = table[table["implementation"] == "reference (fused)"]["ratio_to_library"].astype(float)
            self.twin_ratio = (fused.min(), fused.max()) if len(fused) else None

    def tower(self, spec) -> dict:
        """Forward images/s of a tower's image encoder (what feature extraction runs), batch 8, on this CPU, its
        feature dimension and whether it is CLIP-like; the rate of its architecture (random weights). --quick
        measures two towers; the others' rate is then NaN."""
        from .. import models

        key = (spec.string, str(spec.kwargs))
        if key not in self._towers:
            if self.quick and len(self._towers) >= 2:
                return {"model": spec.id, "architecture": spec.string, "feature_dim": 512, "clip_like": True,
                        "with_reference": spec.with_reference, "cpu_images_per_s": float("nan")}
            model = models.resolve({"model": spec.string, "kwargs": spec.kwargs})
            x = torch.randn(8, *model.input_size)
            with torch.inference_mode():
                dim = model.encode_image(x[:1]).shape[-1]
                seconds = _time(lambda m=model, x=x: m.encode_image(x), reps=1 if "L-14" in spec.name else 2)
            self._towers[key] = {"model": spec.id, "architecture": spec.string, "feature_dim": dim,
                                 "with_reference": spec.with_reference, "clip_like": model.clip_like,
                                 "cpu_images_per_s": 8 / seconds}
        return self._towers[key]

    def gpu_rate(self, architecture: str) -> float:
        """The GPU table times the architecture under its timm / open_clip name, without a pretrained tag."""
        return self.gpu.get(architecture.partition(":")[2].split(".")[0], float("nan"))

    @property
    def texts_per_s(self) -> float:
        if self._texts is None:
            self._texts = text_rate()
        return self._texts

    @property
    def probe(self) -> pd.DataFrame:
        if self._probe is None:
            self._probe = probe_rates(self.quick)
        return self._probe

    @property
    def ns_per_ndc(self) -> float:
        return float(self.probe["ns_per_NDC"].median())

    def feature_bytes(self, dim: int) -> float:
        return feature_bytes(dim)

    def features(self, suite: str, config: dict, images: int, clip_only: bool = False,
                 disk: bool = False) -> list[dict]:
        """The rows of extracting features of `images` images with each model of a full profile (and its twin):
        the decode in DataLoader workers competing with the model for the CPU's cores; on the GPU machine 16 cores
        decode."""
        from .. import models

        rows, seen = [], set()
        for declared in config["models"]:
            spec = models.parse(declared)
            t = self.tower(spec)
            if (spec.string, str(spec.kwargs)) in seen or (clip_only and not t["clip_like"]):
                continue
            seen.add((spec.string, str(spec.kwargs)))
            passes = 2 if spec.with_reference else 1  # library and reference twin each extract their features
            n = images * passes
            decode_s = n / (self.decode * self.cores)
            g_rate = self.gpu_rate(spec.string)
            gpu_s = max(n / g_rate, n / (self.decode * 16))
            rows.append({"stage": f"{suite}: features of {spec.id}" + (" + reference" if passes == 2 else ""),
                         "size": f"{n:,} images", "rate": f"{t['cpu_images_per_s']:.1f} img/s CPU forward; "
                         f"{self.decode:.0f} img/s/core decode" + (f"; {g_rate:,.0f} img/s GPU" if g_rate == g_rate
                                                                    else ""),
                         "cpu_seconds": n / t["cpu_images_per_s"] + decode_s, "gpu_seconds": gpu_s,
                         "gpu_x8_seconds": gpu_s / 8, "disk_bytes": n * self.feature_bytes(int(t["feature_dim"]))
                         if disk else 0.0})
        return rows



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
    """(stage table, rate table, facts): each suite's full profile planned by its evaluator's plan(config, rates)."""
    import importlib

    from ..run.suites import load_suite, suite_names

    rates = Rates(quick, gpu_bench)
    rows = []
    for name in suite_names():
        suite = load_suite(name)
        evaluator = importlib.import_module(suite.EVALUATOR if "." in suite.EVALUATOR else
                                            f"harness.evals.{suite.EVALUATOR}")
        if hasattr(evaluator, "plan"):
            rows += evaluator.plan(suite.get_config("full"), rates)
    towers = pd.DataFrame(list(rates._towers.values()))
    tables = {"Image towers: forward images/s (float32, batch 8, 224×224)": towers,
              "Linear probe: seconds per objective evaluation (float32, blocks of 1,024 rows)": rates.probe}
    if len(rates.train):
        tables["Data-scale full profile: training steps/s (batch 256, 64×64)"] = rates.train
    facts = {"cores": rates.cores, "decode_per_core": rates.decode, "jpeg_bytes": rates.jpeg_bytes,
             "texts_per_s": rates.texts_per_s, "ns_per_NDC": rates.ns_per_ndc,
             "gpu_source": str(gpu_bench) if rates.gpu else None, "gpu_device": rates.gpu_device,
             "twin_ratio": rates.twin_ratio}
    return pd.DataFrame(rows), tables, facts


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

"""Benchmarks: speed and memory, measured (never asserted in tests).

- models:     images per second and peak memory of the reference models (explicit formula and fused
              attention) against timm and open_clip carrying the same weights, at equal dtype and batch size.
- attention:  one attention call over sequence lengths N: the explicit formula, each torch SDPA backend the
              device offers, and the reference's online-softmax attention (memory linear in N); achieved
              FLOP/s, the fraction of the device's measured matrix-multiply peak, peak memory, and how time
              and memory grow with N (log-log slope).
- probe:      harness.linear_probe against scikit-learn on the same features: time and accuracy.

Run:    nox -s bench                      (python -m harness bench --device auto --out results)
Tables: results/bench_models.*, results/bench_attention.{csv,md,png}, results/bench_probe.*, each naming the
        device. Peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the largest live total of the
        tensors torch allocates during one call, from torch.profiler's memory events.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..infra import results
from .args import Parser

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, min_time: float = 1.0, min_reps: int = 3, max_reps: int = 50,
                     warmup: int = 1) -> float:
    """Median wall time of one call of fn, after `warmup` calls; at least min_reps calls and min_time seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(fn, device: torch.device) -> int:
    """Bytes: the most memory that tensors allocated during one call of fn held at once (beyond what was
    allocated before the call)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    # every allocation (+bytes) and free (-bytes) torch's CPU allocator made, in time order
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """The device's matrix-multiply rate, measured: FLOP/s of a large square matmul in `dtype`."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, min_time=1.0)


# --------------------------------------------------------------------------------------------- models
# harness.models names (random weights) and the batch each is timed at
CPU_MODELS = [("timm:vit_tiny_patch16_224", 32), ("timm:vit_small_patch16_224", 32), ("timm:vit_base_patch16_224", 16),
              ("open_clip:ViT-B-32", 32)]
GPU_MODELS = [("timm:vit_small_patch16_224", 256), ("timm:vit_base_patch16_224", 256),
              ("timm:vit_large_patch16_224", 128), ("open_clip:ViT-B-32", 256), ("open_clip:ViT-L-14", 128)]


def _models(name: str, device: torch.device, dtype: torch.dtype):
    """(the model, its image tower, the reference's tower with explicit attention, with fused attention, the input
    size): same weights, dtype, device."""
    from .. import models

    lib = models.resolve(name, seed=0)
    lib.module.to(device, dtype)
    explicit, fused = models.reference(lib).image_tower, models.reference(lib).image_tower
    return lib, lib.image_tower, explicit.set_fused_attn(False), fused.set_fused_attn(True), lib.input_size


def bench_models(device: torch.device, dtype: torch.dtype, specs: list[dict], min_time: float = 6.0) -> pd.DataFrame:
    """Each model's three implementations timed in interleaved rounds (library, explicit, fused, library, ...),
    so that a drift in the machine's speed falls on all three alike; the median call of each is reported."""
    rows = []
    for name, batch_size in tqdm(specs, desc="models", unit="model"):
        lib_model, lib, explicit, fused, shape = _models(name, device, dtype)
        x = torch.randn(batch_size, *shape, device=device, dtype=dtype)
        params = sum(p.numel() for p in lib.parameters())
        impls = {"library": lib, "reference (explicit)": explicit, "reference (fused)": fused}
        times: dict[str, list[float]] = {name: [] for name in impls}
        with torch.inference_mode():
            for module in impls.values():  # warm-up
                module(x)
            start = time.perf_counter()
            while min(map(len, times.values())) < 3 or (time.perf_counter() - start < min_time
                                                        and len(times["library"]) < 50):
                for name, module in impls.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    module(x)
                    _sync(device)
                    times[name].append(time.perf_counter() - t0)
            memory = {name: peak_memory(lambda m=module, x=x: m(x), device) for name, module in impls.items()}
        lib_rate = batch_size / statistics.median(times["library"])
        for impl in impls:
            t = statistics.median(times[impl])
            rows.append({"model": lib_model.spec.name, "library": lib_model.library, "implementation": impl,
                         "dtype": str(dtype).removeprefix("torch."), "batch_size": batch_size,
                         "params": params, "images_per_s": batch_size / t, "ms_per_batch": 1000 * t,
                         "ratio_to_library": batch_size / t / lib_rate, "calls": len(times[impl]),
                         "peak_memory_mb": memory[impl] / 2**20})
        del lib_model, lib, explicit, fused, impls
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ attention
def _attention_impls(device: torch.device):
    """name -> fn(q, k, v): the explicit formula, online softmax, and each SDPA backend torch has."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..reference.attention import online_softmax_attention, scaled_dot_product_attention

    impls = {"reference explicit": scaled_dot_product_attention,
             "reference online softmax": lambda q, k, v: online_softmax_attention(q, k, v, block_size=256)}
    backends = {"sdpa math": SDPBackend.MATH, "sdpa flash": SDPBackend.FLASH_ATTENTION,
                "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION}
    if hasattr(SDPBackend, "CUDNN_ATTENTION") and device.type == "cuda":
        backends["sdpa cudnn"] = SDPBackend.CUDNN_ATTENTION
    for name, backend in backends.items():
        def run(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)
        impls[name] = run
    return impls


def bench_attention(device: torch.device, dtype: torch.dtype, lengths: list[int], batch: int, heads: int,
                    head_dim: int) -> pd.DataFrame:
    peak = matmul_peak(device, dtype)
    rows = []
    impls = _attention_impls(device)
    for n in tqdm(lengths, desc="attention", unit="N"):
        g = torch.Generator(device="cpu").manual_seed(n)
        q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).to(device, dtype) for _ in range(3))
        flops = 4 * batch * heads * n * n * head_dim  # QKᵀ and PV, 2 FLOPs per multiply-add
        for name, fn in impls.items():
            row = {"implementation": name, "N": n, "batch": batch, "heads": heads, "head_dim": head_dim,
                   "dtype": str(dtype).removeprefix("torch."), "matmul_peak_tflops": peak / 1e12}
            try:
                with torch.inference_mode():
                    fn(q, k, v)
                    t = seconds_per_call(lambda f=fn, a=(q, k, v): f(*a), device, min_time=0.5)
                    mem = peak_memory(lambda f=fn, a=(q, k, v): f(*a), device)
            except RuntimeError as e:  # the backend does not run on this device / dtype / shape
                rows.append({**row, "status": "unavailable", "reason": str(e).splitlines()[0][:200]})
                continue
            rows.append({**row, "status": "ok", "ms": 1000 * t, "tflops": flops / t / 1e12,
                         "fraction_of_matmul_peak": flops / t / peak, "peak_memory_mb": mem / 2**20})
    df = pd.DataFrame(rows)
    # growth with N: the slope of log(time) and log(memory) against log(N) over the three largest N
    for name, g in df[df.status == "ok"].groupby("implementation"):
        g = g.sort_values("N").tail(3)
        if len(g) >= 2:
            logn = np.log(g["N"].to_numpy(float))
            df.loc[df.implementation == name, "time_exponent"] = np.polyfit(logn, np.log(g["ms"]), 1)[0]
            df.loc[df.implementation == name, "memory_exponent"] = np.polyfit(
                logn, np.log(np.maximum(g["peak_memory_mb"], 1e-6)), 1)[0]
    return df


def plot_attention(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df.status == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for name, g in ok.groupby("implementation"):
        axes[0].plot(g["N"], g["ms"], marker="o", label=name)
        axes[1].plot(g["N"], g["peak_memory_mb"], marker="o", label=name)
    for ax, label in zip(axes, ("time per call (ms)", "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    d = ok.iloc[0]
    fig.suptitle(f"Attention, batch {d['batch']} × {d['heads']} heads × head dim {d['head_dim']}, {d['dtype']}, "
                 f"{results.device_name(df.attrs.get('device', 'cpu'))}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- linear probe
def probe_feature_sets(quick: bool = False) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The probe benchmarks' two feature sets, of different shapes: (name, train x, train y, test x, test y).
      - Fashion-MNIST pixels: 784 values, 10 classes, 500 training and 500 test images a class (class-balanced
        draws, seed 0);
      - synthetic: 512 dimensions, 100 classes, 100 training and 50 test points a class: Gaussian classes around
        random means (scale 0.3) with one covariance shared by all, correlated and with variances spread over 1e3
        (seed 0) — the shape of an embedding probed on a 100-class set (CIFAR-100's), which is not on this disk."""
    from ..data import images as data_lib
    from ..data import load as load_data

    per_class = (50, 50) if quick else (500, 500)
    train, test = load_data("fashion_mnist", "train"), load_data("fashion_mnist", "test")
    tri = data_lib.balanced_subset(train.labels, per_class[0], seed=0)
    tei = data_lib.balanced_subset(test.labels, per_class[1], seed=0)
    xtr, ytr = data_lib.grayscale_tensors(train, tri)
    xte, yte = data_lib.grayscale_tensors(test, tei)
    sets = [("Fashion-MNIST pixels", xtr.flatten(1).numpy().astype(np.float64), ytr.numpy(),
             xte.flatten(1).numpy().astype(np.float64), yte.numpy())]
    rng = np.random.default_rng(0)
    d, c = 512, 100
    n_train, n_test = (20, 10) if quick else (100, 50)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mix = q * np.logspace(0, 1.5, d)  # the shared covariance's square root: correlated, variances over 1e3
    means = rng.normal(scale=0.3, size=(c, d)) @ mix.T

    def draw(n):
        y = np.repeat(np.arange(c), n)
        return means[y] + rng.normal(size=(len(y), d)) @ mix.T, y

    (a, b), (e, f) = draw(n_train), draw(n_test)
    sets.append(("synthetic 512-d, 100 classes", a, b, e, f))
    return sets


def bench_probe(device: torch.device, quick: bool = False) -> pd.DataFrame:
    """harness.methods.probe.linear_probe against scikit-learn doing the same work, on two feature sets
    (probe_feature_sets): the same standardised features, the same validation split and strengths in the same
    order, warm starts where the harness has them, and the same stopping rules in scikit-learn's terms (its gtol
    bounds the largest |gradient| of the same objective, mean CE + λ/2‖W‖² with C = 1/(λN): given the harness's
    bound on the gradient's norm, a looser rule, in scikit-learn's favour)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from ..methods.probe import final_fit, linear_probe, standardise, validation_split

    rows = []
    sets = probe_feature_sets(quick)
    # warm-up, untimed: a process's first fit allocates and loads its kernels, and scikit-learn's first fit has
    # its own start-up; steady state is compared
    _, xtr, ytr, xte, yte = sets[0]
    with warnings.catch_warnings():  # 5 iterations: not converged, on purpose
        warnings.simplefilter("ignore")
        linear_probe(xtr[:200], ytr[:200], xte[:50], yte[:50], num_classes=10, device=device, max_iter=5,
                     sweep_max_iter=5)
        LogisticRegression(max_iter=5).fit(xtr[:200], ytr[:200])
    for name, xtr, ytr, xte, yte in sets:
        classes = int(max(ytr.max(), yte.max()) + 1)
        common = {"features": name, "feature_dim": xtr.shape[1], "classes": classes, "train_images": len(ytr),
                  "test_images": len(yte)}
        t0 = time.perf_counter()
        res = linear_probe(xtr, ytr, xte, yte, num_classes=classes, device=device)
        t_ours = time.perf_counter() - t0
        grid = list(res.sweep)  # in the order the harness fitted them: the grid, then the refinement
        rows.append({**common, "implementation": "harness.linear_probe",
                     "work": f"λ sweep ({len(grid)} fits) + final fit", "strength": res.strength, "top1": res.top1,
                     "seconds": t_ours, "final_iterations": res.iterations, "converged": res.converged,
                     "settings": "fit_many: the sweep's strengths together (7, then 4 from the best's solution), "
                                 "≤ 200 iterations or ‖∇f‖ ≤ 1e-4·max(1, f); final fit from zero, "
                                 "float32 to 1e-6, float64 to ‖∇f‖ ≤ 1e-7·max(1, f)"})

        # scikit-learn: the same strengths on the same split, warm-started along the path (strongest first, as
        # its warm_start allows), then the refinement from the best's solution, then the final fit from it
        xs_tr, xs_te = standardise(xtr, xte)
        val, fit_idx = validation_split(len(xs_tr))  # linear_probe's own split
        t0 = time.perf_counter()
        scores, coefs = {}, {}
        clf = LogisticRegression(max_iter=200, tol=1e-4, warm_start=True)
        first, refine = grid[:7], grid[7:]
        with warnings.catch_warnings():  # ≤ 200 iterations, like the harness's sweep fits: not converged, on purpose
            warnings.simplefilter("ignore", ConvergenceWarning)
            for group, start in ((sorted(first, reverse=True), None), (sorted(refine, reverse=True), "best")):
                if start == "best":
                    best = max(scores, key=lambda lam: (scores[lam], lam))
                    clf.coef_, clf.intercept_ = (v.copy() for v in coefs[best])
                for lam in group:
                    clf.set_params(C=1 / (lam * len(fit_idx)))
                    clf.fit(xs_tr[fit_idx], ytr[fit_idx])
                    scores[lam], coefs[lam] = clf.score(xs_tr[val], ytr[val]), (clf.coef_.copy(),
                                                                                   clf.intercept_.copy())
        best = max(scores, key=lambda lam: (scores[lam], lam))
        clf.coef_, clf.intercept_ = (v.copy() for v in coefs[best])
        clf.set_params(C=1 / (best * len(xs_tr)), max_iter=3000, tol=1e-7)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(xs_tr, ytr)
        t_sk = time.perf_counter() - t0
        rows.append({**common, "implementation": "scikit-learn", "work": f"λ sweep ({len(grid)} fits) + final fit",
                     "strength": best, "top1": 100 * clf.score(xs_te, yte), "seconds": t_sk,
                     "final_iterations": int(clf.n_iter_[0]), "converged": not caught,
                     "settings": f"LogisticRegression(lbfgs) {sklearn_version()}: sweep max_iter 200, tol 1e-4, "
                                 "warm_start; final fit warm-started, max_iter 3000, tol 1e-7 (largest |gradient|)"})

        # the final fit alone at the chosen λ, cold: the harness's (float32, then float64) and scikit-learn's
        x32 = torch.as_tensor(xs_tr, dtype=torch.float32, device=device)
        y32 = torch.as_tensor(ytr, device=device)
        t0 = time.perf_counter()
        out = final_fit(x32, y32, classes, res.strength)
        _sync(device)
        t_fit = time.perf_counter() - t0
        W, b = out.W[0].float(), out.b[0].float()
        pred = (torch.as_tensor(xs_te, dtype=torch.float32, device=device) @ W + b).argmax(1).cpu().numpy()
        rows.append({**common, "implementation": "harness final_fit", "work": "final fit at λ, from zero",
                     "strength": res.strength, "top1": 100 * (pred == yte).mean(), "seconds": t_fit,
                     "final_iterations": out.iterations[0], "converged": out.converged[0],
                     "settings": "float32 to 1e-6, float64 to ‖∇f‖ ≤ 1e-7·max(1, f); preconditioned"})
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = LogisticRegression(C=1 / (res.strength * len(xs_tr)), max_iter=3000, tol=1e-7).fit(xs_tr, ytr)
        t_skfit = time.perf_counter() - t0
        rows.append({**common, "implementation": "scikit-learn", "work": "final fit at λ, from zero",
                     "strength": res.strength, "top1": 100 * clf.score(xs_te, yte), "seconds": t_skfit,
                     "final_iterations": int(clf.n_iter_[0]), "converged": not caught,
                     "settings": "max_iter 3000, tol 1e-7 (largest |gradient|)"})
    df = pd.DataFrame(rows)
    for _, g in df.groupby(["features", "work"]):
        sk = g.loc[g.implementation == "scikit-learn", "seconds"].iloc[0]
        df.loc[g.index, "speedup_vs_sklearn"] = sk / g["seconds"]
    return df


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


# ------------------------------------------------------------------------------------------------ pipeline
def decode_rate(n: int = 150) -> tuple[float, float]:
    """(images/s on one core, mean JPEG bytes): PIL decode + timm's eval transform (resize 248, crop 224, to
    tensor, normalise) of rehearsal JPEGs of ImageNet's sizes (harness.tools.rehearsal)."""
    import io

    import timm
    from PIL import Image

    from ..models.timm import transform
    from .rehearsal import synth_jpeg

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False)
    tf = transform(model)
    jpegs = [synth_jpeg(1000 + i) for i in range(n)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for j in jpegs:
            tf(Image.open(io.BytesIO(j)).convert("RGB"))
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return n / seconds, float(np.mean([len(j) for j in jpegs]))


# the extraction benchmark's encoders: small random-init models sized for Fashion-MNIST on a CPU (the linear_probe
# suite's default ones, as declared there at the time this was written)
PIPELINE_MODELS = [
    {"id": "vit_tiny_p4_d4_28", "model": "timm:vit_tiny_patch16_224",
     "kwargs": {"img_size": 28, "patch_size": 4, "depth": 4}, "data_cfg": {"input_size": [3, 28, 28], "crop_pct": 1.0}},
    {"id": "resnet18_32", "model": "timm:resnet18", "data_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0}},
    {"id": "clip_vit_s16_32", "model": "open_clip:ViT-S-16", "kwargs": {"force_image_size": 32}},
]


def bench_pipeline(device: torch.device, dtype: torch.dtype, quick: bool = False) -> pd.DataFrame:
    """Feature extraction against the model alone: images/s of harness.methods.features.extract (data read, batched
    transform, copy, forward, copy back) over the encoder's own images/s on already-transformed tensors at the same
    batch size, for PIPELINE_MODELS on Fashion-MNIST (goal ≥ 0.9); then JPEG decode and resize images/s on one
    core."""
    from .. import models
    from ..data import load as load_data
    from ..data.transforms import batched
    from ..methods.features import extract

    test = load_data("fashion_mnist", "test")
    n = 2000 if device.type == "cpu" or quick else 10000
    rows_idx = np.arange(n)
    batch = 500 if device.type == "cpu" else 1000
    specs = PIPELINE_MODELS
    rows = []
    amp = dtype if device.type == "cuda" and dtype != torch.float32 else None
    for spec in specs[:1] if quick else specs:
        enc = models.resolve(spec, device=device)
        x = batched(enc.transform)(torch.from_numpy(test.pixels(rows_idx[:batch]))).to(device)

        def forward(enc=enc, x=x):
            if amp is None:
                return enc.encode_image(x)
            with torch.autocast(device.type, dtype=amp):
                return enc.encode_image(x)

        with torch.inference_mode():
            model_rate = batch / seconds_per_call(forward, device, min_time=2.0)
        extract(enc.encode_image, test, enc.transform, indices=rows_idx[:batch], model_id="warm-up", weights="w",
                device=device, batch_size=batch, autocast=amp)  # warm-up
        start = time.perf_counter()
        extract(enc.encode_image, test, enc.transform, indices=rows_idx, model_id=enc.id, weights=enc.weights,
                device=device, batch_size=batch, autocast=amp)
        _sync(device)
        rate = n / (time.perf_counter() - start)
        rows.append({"part": "extraction", "model": enc.id, "images": n, "batch_size": batch,
                     "dtype": str(amp or torch.float32).removeprefix("torch."), "model_images_per_s": model_rate,
                     "extract_images_per_s": rate, "extract_over_model": rate / model_rate})
    decode, size = decode_rate(50 if quick else 150)
    rows.append({"part": "JPEG decode + resize 248 + crop 224, one core", "model": "", "images": 50 if quick else 150,
                 "extract_images_per_s": decode, "mean_jpeg_kib": size / 1024})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- cold eval
def _stages(read) -> list[tuple[str, str, float]]:
    """(suite, stage, seconds) of a run, each suite's evaluator reading its own tables (its `stages(read)`):
    where the time went inside each suite. `read(name)` gives a table of that run, or None."""
    import importlib

    from ..run.suites import load_suite, suite_names

    out = []
    for name in suite_names():
        suite = load_suite(name)
        evaluator = importlib.import_module(suite.EVALUATOR if "." in suite.EVALUATOR else
                                            f"harness.evals.{suite.EVALUATOR}")
        out += [(name, stage, seconds) for stage, seconds in getattr(evaluator, "stages", lambda read: [])(read)]
    return out


def _committed_table(rev: str, name: str) -> pd.DataFrame | None:
    """results/<name>.csv as committed at `rev`, or None."""
    import io
    import subprocess

    proc = subprocess.run(["git", "show", f"{rev}:results/{name}.csv"], cwd=results.REPO_ROOT, capture_output=True,
                          text=True)
    return pd.read_csv(io.StringIO(proc.stdout)) if proc.returncode == 0 else None


def previous_eval() -> str | None:
    """The last commit that changed results/bench_eval.csv: the cold eval this one is set beside."""
    import subprocess

    proc = subprocess.run(["git", "log", "-1", "--format=%h", "--", "results/bench_eval.csv"], cwd=results.REPO_ROOT,
                          capture_output=True, text=True)
    return proc.stdout.strip() or None


def bench_eval(out: Path, processes: str = "auto", previous: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """A cold `python -m harness run` of every suite's default profile (a fresh cache) timed by suite (wall clock)
    and by stage (each suite's evaluator reading the tables it wrote), beside the same stages of the previous cold
    eval: results/bench_eval.csv at `previous` (default: the last commit that changed it). It is the real eval: its
    tables are written into `out`, where `nox -s eval` writes them. Returns (the table, the previous commit)."""
    import re
    import subprocess
    import sys
    import tempfile

    previous = previous or previous_eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--device", "cpu", "--processes", processes,
                                 "--out", str(out), "--cache-dir", f"{tmp}/cache"], cwd=results.REPO_ROOT,
                                stderr=subprocess.PIPE, text=True)
        log = []
        for line in proc.stderr:  # shown as it comes (progress bars), kept for the suites' times
            sys.stderr.write(line)
            log.append(line)
        total = time.perf_counter() - start
        code = proc.wait()
        if code == 1 and "verdict row(s) failed" in "".join(log):  # measured all the same; the rows say which
            print("bench: the cold eval's tables hold failing verdict rows (printed above)", file=sys.stderr)
        elif code:
            raise RuntimeError(f"the cold eval failed: {''.join(log)[-2000:]}")
        walls = {m.group(1): float(m.group(2)) for m in re.finditer(r"^([\w, ]+): done in ([\d.]+) s", "".join(log),
                                                                    re.MULTILINE)}
        stages = _stages(lambda name: pd.read_csv(Path(out) / f"{name}.csv")
                         if (Path(out) / f"{name}.csv").exists() else None)
    before = _committed_table(previous, "bench_eval") if previous else None
    before = {} if before is None else {(r.suite, r.stage): r.seconds_after for r in before.itertuples()}
    rows = [{"suite": "all suites", "stage": "wall clock, cold (process start to last table)", "seconds_after": total,
             "processes": processes}]
    rows += [{"suite": name, "stage": "wall clock", "seconds_after": sec} for name, sec in walls.items()]
    rows += [{"suite": s, "stage": st, "seconds_after": sec} for s, st, sec in stages]
    rows += [{"suite": s, "stage": st} for (s, st) in before
             if not any(r.get("suite") == s and r.get("stage") == st for r in rows)]
    for r in rows:
        r["seconds_previous"] = before.get((r["suite"], r["stage"]))
    return pd.DataFrame(rows), previous


# ------------------------------------------------------------------------------------------------ main
def run(device: torch.device, dtype: str, out: Path, parts: list[str], quick: bool = False,
        models: list[tuple[str, int]] | None = None) -> list[Path]:
    torch.manual_seed(0)
    torch_dtype = DTYPES[dtype]
    prov = results.provenance({"parts": parts, "dtype": dtype, "quick": quick}, device, 0)
    device_label = results.device_name(device)
    written, index = [], {}
    if "models" in parts:
        specs = models or (GPU_MODELS if device.type == "cuda" else CPU_MODELS)[: 1 if quick else None]
        df = bench_models(device, torch_dtype, specs).assign(**prov)
        written += results.write_table(
            df, out, "bench_models", f"Throughput and peak memory: reference vs library ({device_label})",
            ["model", "implementation", "dtype", "batch_size", "images_per_s", "ratio_to_library", "ms_per_batch",
             "peak_memory_mb"],
            "Image towers only, random weights, inference mode. `reference (explicit)`: attention written as "
            "softmax(QKᵀ/√d)V; `reference (fused)`: the same model calling torch's scaled_dot_product_attention "
            "(as timm and open_clip do). ratio_to_library = images/s over the library model's images/s (goal: "
            "fused ≥ 0.95). The three are timed in interleaved rounds after a warm-up (`calls` each, at least 6 s "
            "per model); the median call is reported. On a shared 2-core CPU the rounds vary by several percent.")
        index["bench_models"] = f"images/s and peak memory, reference vs timm/open_clip ({device_label})"
    if "attention" in parts:
        lengths = [50, 197, 577] if quick else [50, 197, 577, 1024, 4096]
        heads = 12
        df = bench_attention(device, torch_dtype, lengths, batch=1 if device.type == "cpu" else 8, heads=heads,
                             head_dim=64)
        df.attrs["device"] = str(device)
        df = df.assign(**prov)
        written += results.write_table(
            df, out, "bench_attention", f"Attention over sequence length ({device_label})",
            ["implementation", "N", "status", "ms", "tflops", "fraction_of_matmul_peak", "peak_memory_mb",
             "time_exponent", "memory_exponent"],
            "FLOPs = 4·B·H·N²·d (QKᵀ and PV). fraction_of_matmul_peak: achieved FLOP/s over a large square "
            "matmul's FLOP/s measured on the same device and dtype (matmul_peak_tflops). time_exponent, "
            "memory_exponent: slope of log(time), log(peak memory) against log(N) over the three largest N "
            "(2 = quadratic, 1 = linear). `unavailable`: torch has no such kernel for this device, dtype or "
            "shape (the csv's `reason` column has torch's message)."
            "\n\n![time and memory against N](bench_attention.png)")
        written.append(results.atomic_write_figure(lambda p: plot_attention(df, p), out / "bench_attention.png"))
        index["bench_attention"] = f"attention time, FLOP/s and memory against N ({device_label})"
    if "pipeline" in parts:
        df = bench_pipeline(device, torch_dtype, quick).assign(**prov)
        written += results.write_table(
            df, out, "bench_pipeline", f"Feature extraction against the model alone ({device_label})",
            ["part", "model", "images", "batch_size", "dtype", "model_images_per_s", "extract_images_per_s",
             "extract_over_model", "mean_jpeg_kib"],
            "extract_over_model: images/s of harness.methods.features.extract on the embedded data (Fashion-MNIST held "
            "in "
            "memory, transformed a batch at a time as tensors; no cache) over the encoder's own images/s on "
            "already-transformed tensors at the same batch size (goal ≥ 0.9). The JPEG row: PIL decode and timm's "
            "eval transform of rehearsal JPEGs of ImageNet's sizes on one core (DataLoader workers multiply it).")
        index["bench_pipeline"] = f"feature extraction over model images/s, JPEG decode per core ({device_label})"
    if "eval" in parts:
        df, previous = bench_eval(out)
        df = df.assign(**prov)
        written += results.write_table(
            df, out, "bench_eval", "A cold default eval, by suite and by stage (CPU)",
            ["suite", "stage", "seconds_previous", "seconds_after", "processes"],
            "`seconds_after`: this run — `python -m harness run --processes auto` (what `nox -s eval` runs) in a fresh "
            "cache, every suite's default profile, its tables the published ones beside this file; wall clock per "
            "suite (the suites that split into units run together as one-thread processes claiming units from one "
            "pool, so their wall clock is shared) and, inside each suite, the seconds its tables record (with two "
            "processes, stage seconds add up to more than the wall clock). `seconds_previous`: the same stages of "
            f"the previous cold eval, results/bench_eval.csv at {previous or 'none (no earlier run)'} (the last "
            "commit that changed it); its machine may have been another (the provenance columns there say which).")
        index["bench_eval"] = "a cold default eval timed by suite and stage, beside the previous one"
    if "peers" in parts:
        from .bench_peers import __doc__ as peers_doc
        from .bench_peers import bench_peers

        df = bench_peers(device, *((5, 1) if quick else ())).astype({"train_images": "Int64"}).assign(**prov)
        written += results.write_table(
            df, out, "bench_peers", f"The harness beside CLIP_benchmark, the same work ({device_label})",
            ["task", "implementation", "model", "images", "classes", "templates", "train_images", "rounds",
             "work", "regularisation", "seconds", "speed_vs_clip_benchmark", "top1", "top5", "mean_per_class_recall",
             "image_to_text_R@1", "text_to_image_R@1", "text_to_image_R@5"],
            peers_doc.split("\n", 1)[1].strip() + "\n\n`seconds`: the median of the rounds (min and max in the csv); "
            "`speed_vs_clip_benchmark`: CLIP_benchmark's median seconds over this row's. Goals (issue 35), measured "
            "not asserted: first call ≥ 1.0×, repeated calls ≥ 2×, the probe ≥ 5× at equal or better accuracy.")
        index["bench_peers"] = (f"zero-shot classification and retrieval and the linear probe, time and accuracy, "
                                f"harness vs CLIP_benchmark ({device_label})")
    if "probe" in parts:
        df = bench_probe(device, quick).assign(**prov)
        written += results.write_table(
            df, out, "bench_probe", f"Linear probe: harness vs scikit-learn ({device_label})",
            ["features", "implementation", "work", "train_images", "feature_dim", "classes", "strength", "top1",
             "final_iterations", "converged", "seconds", "speedup_vs_sklearn"],
            " ".join(bench_probe.__doc__.split()) + " Each pair of rows is one feature set and one piece of work; "
            "`settings` in the csv says each side's. Goal (issue 43): the whole procedure ≥ 5× scikit-learn's at a "
            "test top-1 no lower. Both are warmed up first, untimed (a process's first calls load and allocate).")
        index["bench_probe"] = f"linear probe time and accuracy, harness vs scikit-learn ({device_label})"
    written.append(results.write_index(out, index))
    return written


def main(argv: list[str] | None = None) -> int:
    from ..infra.suite import ConfigError
    from ..run.runner import resolve_device

    p = Parser(prog="python -m harness bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: float32 on CPU, bfloat16 on a GPU")
    p.add_argument("--out", type=Path, default=results.REPO_ROOT / "results")
    p.add_argument("--parts", default="models,attention,probe,pipeline,eval",
                   help="comma-separated: models,attention,probe,pipeline,eval,peers (eval: a cold default eval, "
                        "~20 min; peers: beside CLIP_benchmark, needs the clip_benchmark versions nox installs)")
    p.add_argument("--quick", action="store_true", help="one model and short sequences (a smoke run)")
    p.add_argument("--models", help="the models part's models, harness.models names with a batch size each: "
                                    "'timm:vit_small_patch16_224=256,open_clip:ViT-B-32=256' (default: a list for "
                                    "the device; each needs a reference converter)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(parts) - {"models", "attention", "probe", "pipeline", "eval", "peers"}
    if unknown:
        raise ConfigError(f"unknown bench part(s) {sorted(unknown)}: choose from models, attention, probe, pipeline, "
                          "eval, peers")
    if "peers" in parts:
        from .bench_peers import check_probe_peer

        check_probe_peer()  # before any work: the probe comes last
    chosen = None
    if args.models:
        from .. import models

        chosen = []
        for item in args.models.split(","):
            name, _, batch = item.strip().rpartition("=")
            if not name or not batch.isdigit():
                raise ConfigError(f"--models {item!r}: expected NAME=BATCH, e.g. timm:vit_small_patch16_224=256")
            if not models.has_reference(models.check(name)):
                raise ConfigError(f"--models {name}: bench times a model beside its reference twin; {name} has none")
            chosen.append((name, int(batch)))
    start = time.perf_counter()
    paths = run(device, dtype, args.out, parts, args.quick, chosen)
    print(f"bench: {math.ceil(time.perf_counter() - start)} s -> " + ", ".join(str(p) for p in paths))
    return 0

"""The data-scale suite: a ViT and a CNN trained from scratch on nested subsets, accuracy against size.

Each unit is one (architecture, subset size, seed): it trains, evaluates on the test subset, saves its
checkpoint under the cache folder and returns its row; the runner stores the row at once, so a killed run
resumes at the first unfinished unit and a rerun with nothing changed trains nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .. import data
from ..infra import predictions
from ..infra.suite import ConfigError, Context, Table
from ..methods import paired
from ..methods.features import weights_hash
from ..methods.scale_runs import architecture, build_architecture, load_subset, steps_for, trained
from ..methods.train import flops_per_image, predict
from ..models.data_scale import training as model_training

CPU_PROCESSES = True  # on a CPU: one-thread processes taking whole units are faster (run --processes)

def validate(config: dict, ctx: Context) -> None:
    data.check(config["data"], ["train", "test"])
    with torch.device("meta"):  # every declared architecture can be built
        for arch in config["architectures"]:
            try:
                build_architecture(arch)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"data_scale architecture {arch.get('id')!r}: {e}") from None


def units(config: dict, ctx: Context) -> list[str]:
    out = []
    for arch in config["architectures"]:
        sizes = arch.get("sizes", config["sizes_per_class"])
        out += [f"{arch['id']}:{n}:{s}" for n in sizes for s in config["seeds"]]
    return out


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): its
    optimisation steps at ~0.1 s each (the default profile's models, measured 0.07-0.13 s)."""
    per_class = int(unit.split(":")[1])
    return 0.1 * steps_for(per_class * _classes_count(config), config)


def _classes_count(config: dict) -> int:
    return config["data"].get("classes") or 10  # Fashion-MNIST's 10 when not declared; a hint only


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    arch_id, per_class, seed = unit.split(":")
    per_class, seed = int(per_class), int(seed)
    idx, x, _, (x_test, y_test, test_rows), train_total = load_subset(config, per_class)
    model, stats, path = trained(unit, config, ctx.device, ctx.cache_dir)
    logits = predict(model, x_test.to(ctx.device))
    acc = 100.0 * int((logits.argmax(-1).cpu() == y_test).sum()) / len(y_test)
    ranked, margin = predictions.margins(logits.cpu().double().numpy())
    steps = steps_for(len(idx), config)
    return [predictions.attach({
        "architecture": arch_id, "kind": architecture(config, arch_id)["kind"], "train_images": len(idx),
        "per_class": per_class, "fraction": len(idx) / train_total, "seed": seed, "test_accuracy": acc,
        "test_images": len(y_test), "params": sum(p.numel() for p in model.parameters()),
        "flops_per_image": flops_per_image(model, tuple(x.shape[1:])),
        "steps": steps, "epochs": steps * config["recipe"]["batch_size"] / len(idx), **stats,
        "checkpoint": str(path),
        # how the row was made: trained here (the regression gate judges such rows by seed, harness.tools.diff)
        "training": model_training(arch_id, per_class), "training_seed": seed, "weights_hash": weights_hash(model),
    }, test_rows, y_test.numpy(), ranked, margin)]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arch, n), g in runs.groupby(["architecture", "train_images"]):
        acc = g["test_accuracy"].to_numpy()
        mean, low, high = paired.t_interval(acc)  # Student's t over the seeds
        rows.append({"architecture": arch, "train_images": n, "fraction": g["fraction"].iloc[0], "seeds": len(acc),
                     "accuracy_mean": mean, "ci95_low": low, "ci95_high": high,
                     "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                     "params": g["params"].iloc[0], "flops_per_image": g["flops_per_image"].iloc[0],
                     "steps": g["steps"].iloc[0], "epochs": g["epochs"].iloc[0],
                     "train_seconds_mean": g["train_seconds"].mean()})
    return pd.DataFrame(rows).sort_values(["architecture", "train_images"]).reset_index(drop=True)


def pairs(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Each pair of architectures at each training-set size: the accuracy difference seed by seed (both trained
    on the same nested subset with the same seed), its mean and 95% Student-t interval over the seeds
    (harness.methods.paired.paired_t), and how many of the paired seeds the first architecture won."""
    archs = [a for a in order if a in set(runs.architecture)] + sorted(set(runs.architecture) - set(order))
    out = []
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            for n, g in runs[runs.architecture.isin([a, b])].groupby("train_images"):
                acc = g.pivot_table(index="seed", columns="architecture", values="test_accuracy").dropna()
                if a not in acc or b not in acc or acc.empty:
                    continue
                d = (acc[a] - acc[b]).to_numpy()
                mean, lo, hi = paired.paired_t(d)
                out.append({"architecture_a": a, "architecture_b": b, "train_images": n, "seeds": len(d),
                            "diff_mean": mean, "diff_ci95_low": lo, "diff_ci95_high": hi,
                            "a_wins": int((d > 0).sum()), "verdict": "a ahead" if lo > 0 else "b ahead" if hi < 0
                            else "within noise" if lo == lo else "one seed"})
    return pd.DataFrame(out)


def finding(s: pd.DataFrame, vit: str, cnn: str, hybrid: str | None = None) -> str:
    """One or two sentences on the curves, computed from the table, whatever they show; with a hybrid, one more
    on where it lies against the ViT and the CNN at each size."""
    text = _vit_vs_cnn(s, vit, cnn)
    if hybrid is None or not text:
        return text
    h = s[s.architecture == hybrid].set_index("train_images")["accuracy_mean"]
    a = s[s.architecture == vit].set_index("train_images")["accuracy_mean"]
    b = s[s.architecture == cnn].set_index("train_images")["accuracy_mean"]
    places = []
    for n in sorted(set(h.index) & set(a.index) & set(b.index)):
        above = [name for name, other in (("ViT", a[n]), ("CNN", b[n])) if h[n] > other]
        where = ("above both" if len(above) == 2 else f"between them, above the {above[0]}" if above else
                 "below both")
        places.append(f"{n}: {where} ({h[n] - a[n]:+.1f} vs ViT, {h[n] - b[n]:+.1f} vs CNN)")
    return text + f" The hybrid ({hybrid}), by training-set size: " + "; ".join(places) + "."


def _vit_vs_cnn(s: pd.DataFrame, vit: str, cnn: str) -> str:
    a = s[s.architecture == vit].set_index("train_images")["accuracy_mean"]
    b = s[s.architecture == cnn].set_index("train_images")["accuracy_mean"]
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return ""
    diff = [(n, a[n] - b[n]) for n in common]
    crossings = [(n0, n1) for (n0, d0), (n1, d1) in zip(diff, diff[1:]) if (d0 < 0) != (d1 < 0)]
    lead = ", ".join(f"{n}: {d:+.1f}" for n, d in diff)
    if crossings:
        where = "; ".join(f"between {n0} and {n1} training images" for n0, n1 in crossings)
        return f"The curves cross {where} (ViT minus CNN accuracy, points, by training-set size: {lead})."
    ahead = cnn if diff[0][1] < 0 else vit
    trend = "narrows" if abs(diff[-1][1]) < abs(diff[0][1]) else "does not narrow"
    return (f"{ahead} is ahead at every size measured, and its lead {trend} as data grows "
            f"(ViT minus CNN accuracy, points, by training-set size: {lead}).")


def plot(s: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for arch, g in s.groupby("architecture"):
        if len(g) == 1:  # one size (timm's ViT): a hollow square with its interval as error bars, drawn on top
            err = [g["accuracy_mean"] - g["ci95_low"], g["ci95_high"] - g["accuracy_mean"]]
            ax.errorbar(g["train_images"], g["accuracy_mean"], yerr=err, marker="s", markersize=10,
                        fillstyle="none", capsize=6, linestyle="none", zorder=3,
                        label=f"{arch} ({int(g['train_images'].iloc[0]):,} images only)")
            continue
        ax.plot(g["train_images"], g["accuracy_mean"], marker="o", label=arch)
        ax.fill_between(g["train_images"], g["ci95_low"], g["ci95_high"], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against training-set size (mean, 95% interval over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stages(read) -> list[tuple[str, float]]:
    """(stage, seconds) of a run, from its own tables: the training of each architecture, and the rest."""
    runs = read("data_scale_runs")
    if runs is None:
        return []
    out = [(f"training {arch} ({int((runs.architecture == arch).sum())} runs)", float(seconds))
           for arch, seconds in runs.groupby("architecture")["train_seconds"].sum().items()]
    return out + [("everything else in its units", float(runs["unit_seconds"].sum() - runs["train_seconds"].sum()))]


def tables(rows: list[dict], config: dict) -> list[Table]:
    runs = pd.DataFrame(rows)
    s = summary(runs)
    text = finding(s, *config["compare"][:3])
    r, p = config["recipe"], config["step_policy"]
    notes = (f"Recipe for every architecture: AdamW (lr {r['lr']}, weight decay {r['weight_decay']}), "
             f"{r['warmup']:.0%} linear warm-up then cosine decay, batch {r['batch_size']}, label smoothing "
             f"{r['label_smoothing']}, random crop (pad {r['pad']}) and flip. Step policy: a run on n images takes "
             f"max({p['min_steps']}, ⌈{p['epochs']} · n / {r['batch_size']}⌉) optimisation steps (column `steps`), "
             "so small subsets get enough steps to fit and large ones at least "
             f"{p['epochs']} passes over their data. Nested, class-balanced subsets of the "
             f"training set; test accuracy on {int(runs['test_images'].iloc[0])} balanced test images; 95% "
             "intervals from Student's t over seeds. " + config.get("notes", "") + "\n\n**Finding:** " + text)
    return [
        Table("data_scale", s, "ViT vs CNN: accuracy against training-set size",
              f"ViT-vs-CNN accuracy against training-set size; plot: data_scale.png. {text}",
              ["architecture", "train_images", "seeds", "accuracy_mean", "ci95_low", "ci95_high", "params",
               "flops_per_image", "steps", "epochs", "train_seconds_mean"],
              notes + "\n\n![accuracy against training-set size](data_scale.png)", plot=plot),
        Table("data_scale_pairs", pairs(runs, list(config["compare"])),
              "Data-scale suite: architecture pairs, paired over seeds",
              "each pair of architectures at each size: accuracy difference paired seed by seed, 95% t interval",
              ["architecture_a", "architecture_b", "train_images", "seeds", "diff_mean", "diff_ci95_low",
               "diff_ci95_high", "a_wins", "verdict"],
              "`diff_mean`: accuracy of architecture_a minus architecture_b (points), averaged over the seeds; "
              "each seed's two runs share the nested training subset and the test images, so the difference is "
              "taken seed by seed and its 95% interval is Student's t over those paired differences (narrower "
              "than two independent intervals when the seeds move both runs alike). `verdict`: which is ahead "
              "when the interval excludes 0. Per-image predictions of every run are in data_scale_runs' "
              "`predictions` column (python -m harness diff compares two runs image by image)."),
        Table("data_scale_runs", runs, "Data-scale suite: every training run",
              "every (architecture, size, seed) run of the data-scale suite, with its checkpoint",
              ["architecture", "train_images", "seed", "test_accuracy", "final_loss", "epochs", "train_seconds"]),
    ]


def plan(config: dict, rates) -> list[dict]:
    """The full profile's stages (harness.tools.plan): ImageNet-100 decoded once at 64×64, then every
    architecture's training runs (all sizes × seeds), each at the steps/s measured here (batch 256, 2 steps)."""
    import math

    from ..methods.train import Recipe, train

    policy, batch, classes = config["step_policy"], config["recipe"]["batch_size"], config["data"]["classes"]
    measured = []
    for arch in config["architectures"]:
        model = build_architecture(arch)
        x, y = torch.randn(256, 3, 64, 64), torch.randint(0, 100, (256,))
        stats = train(model, x, y, Recipe(steps=2, batch_size=256), seed=0, desc=arch["id"])
        measured.append({"architecture": arch["id"], "cpu_steps_per_s": 2 / stats["train_seconds"]})
    rates.train = pd.DataFrame(measured)
    rows = []
    for arch, r in zip(config["architectures"], measured):
        steps = len(config["seeds"]) * sum(max(policy["min_steps"], math.ceil(policy["epochs"] * classes * n / batch))
                                           for n in arch.get("sizes", config["sizes_per_class"]))
        rows.append({"stage": f"data_scale: training {arch['id']} (all sizes × {len(config['seeds'])} seeds)",
                     "size": f"{steps:,} steps of {batch}", "rate": f"{r['cpu_steps_per_s']:.2f} steps/s CPU",
                     "cpu_seconds": steps / r["cpu_steps_per_s"], "gpu_seconds": float("nan"),
                     "gpu_x8_seconds": float("nan"), "disk_bytes": 0.0})
    images = int(config["data"]["classes"] * 1350)  # ImageNet-100: its classes' train + val images, ~1,350 each
    rows.append({"stage": f"data_scale: decode ImageNet-{classes} once at 64×64", "size": f"{images:,} images",
                 "rate": f"{rates.decode:.0f} img/s/core", "cpu_seconds": images / (rates.decode * rates.cores),
                 "gpu_seconds": images / (rates.decode * 16), "gpu_x8_seconds": images / (rates.decode * 16),
                 "disk_bytes": 0.0})
    return rows

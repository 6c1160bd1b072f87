"""harness.evaluate from a training loop: a tiny CLIP trained here calls it after every epoch; its rows for the final
weights equal `python -m harness run` on the saved checkpoint, and repeated calls decode no image twice (counted,
not timed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import harness
from harness import clip_loss
from harness.evaluation import counters
from harness.tools import cli
from tests.models import TinyCLIP
from tests.test_your_model import CLASSES, NAMES, write_my_data

METRICS = ["top1", "top5", "mean_per_class_recall"]


def _train_batch(root: Path, model: TinyCLIP):
    """The train split's images through the model's own preprocessing, and one caption each."""
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config(model.data_config))
    images, captions = [], []
    for c, name in enumerate(CLASSES):
        for path in sorted((root / "train" / name).glob("*.png")):
            images.append(transform(Image.open(path).convert("RGB")))
            captions.append(f"a photo of {NAMES[c]}.")
    return torch.stack(images), model.tokenizer(captions)


def _steps(model, opt, images, tokens, n: int) -> None:
    """n steps of CLIP's contrastive loss on the (image, caption) pairs, logit scale 10."""
    model.train()
    for _ in range(n):
        loss = clip_loss(model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True), 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def trained(tmp_path):
    root = write_my_data(tmp_path / "my_data")
    spec = {"name": f"imagefolder:{root}", "classnames": str(root / "names.txt"),
            "templates": str(root / "templates.json")}
    torch.manual_seed(0)
    model = TinyCLIP(16)
    images, tokens = _train_batch(root, model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    logged, per_epoch = [], []
    before = counters()
    for epoch in range(3):
        _steps(model, opt, images, tokens, 5)
        rng_state = torch.get_rng_state()
        rows = harness.evaluate(model, [spec], tasks=("zero_shot", "linear_probe"), step=epoch,
                                log=lambda metrics, step: logged.append((step, metrics)))
        assert model.training  # given back in the mode it came in
        assert torch.equal(torch.get_rng_state(), rng_state)  # the training's random stream untouched
        per_epoch.append((rows, counters()))
    return {"root": root, "spec": spec, "model": model, "before": before, "per_epoch": per_epoch,
            "logged": logged, "tmp": tmp_path}


def test_each_epoch_is_evaluated_and_no_image_is_decoded_twice(trained):
    before, per_epoch = trained["before"], trained["per_epoch"]
    decoded = [c["decoded_images"] - before["decoded_images"] for _, c in per_epoch]
    built = [c["classifiers_built"] - before["classifiers_built"] for _, c in per_epoch]
    assert decoded == [36, 36, 36]  # 18 test + 18 train images, in the first call only
    assert built == [1, 2, 3]  # the text tower trained: its classifier is rebuilt each epoch
    for epoch, (rows, _) in enumerate(per_epoch):
        assert list(rows["task"]) == ["classification", "linear probe"] and (rows["step"] == epoch).all()
        assert (rows["images"] == 18).all() and rows.iloc[0]["templates"] == "templates.json (2)"
    assert [step for step, _ in trained["logged"]] == [0, 1, 2]
    assert set(trained["logged"][0][1]) == {f"imagefolder:{trained['root']}/{task}/{m}"
                                             for task in ("classification", "linear probe") for m in METRICS}
    # nothing changed since the last call: neither images nor the classifier are computed again
    again = harness.evaluate(trained["model"], [trained["spec"]], step=3)
    now = counters()
    assert now["decoded_images"] == per_epoch[-1][1]["decoded_images"]
    assert now["classifiers_built"] == per_epoch[-1][1]["classifiers_built"]
    assert again[METRICS].equals(per_epoch[-1][0][METRICS].iloc[:1])


def test_final_rows_equal_the_command_line_on_the_saved_checkpoint(trained):
    model, spec, tmp = trained["model"], trained["spec"], trained["tmp"]
    ckpt = tmp / "final.pt"
    torch.save(model.state_dict(), ckpt)
    declared = json.dumps([{"model": "python:tests.models:tiny_clip", "weights": str(ckpt)}])
    for suite in ("zero_shot", "linear_probe"):
        assert cli.main(["run", suite, "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache"),
                         "--set", f"models={declared}", "--set", f"datasets={json.dumps([spec])}"]) == 0
    ours = trained["per_epoch"][-1][0].set_index("task")
    zs = pd.read_csv(tmp / "out" / "zero_shot.csv")
    zs = zs[zs["dataset"] != "mean"].iloc[0]
    lp = pd.read_csv(tmp / "out" / "linear_probe.csv")
    lp = lp[lp["dataset"] != "mean"].iloc[0]
    # the same weights, images, preprocessing, templates and code in this process: the same numbers
    for metric in METRICS:
        assert ours.loc["classification", metric] == pytest.approx(zs[metric], abs=1e-9), metric
        assert ours.loc["linear probe", metric] == pytest.approx(lp[metric], abs=1e-9), metric
    assert zs["templates"] == ours.loc["classification", "templates"]


def test_bad_requests_say_what_to_do(trained):
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 224 * 224, 8))
    with pytest.raises(ValueError, match="not CLIP-like"):
        harness.evaluate(encoder, [trained["spec"]])
    with pytest.raises(ValueError, match="tasks \\['zeroshot'\\]"):
        harness.evaluate(trained["model"], [trained["spec"]], tasks=("zeroshot",))
    rows = harness.evaluate(encoder, [trained["spec"]], tasks=("linear_probe",))  # an image encoder: the probe
    assert list(rows["task"]) == ["linear probe"] and np.isfinite(rows["top1"]).all()


# ----------------------------------------------------------------------------------------- checkpoint sweeps


def test_a_checkpoint_sweep_gives_a_row_per_checkpoint_a_plot_and_consecutive_pairs(trained):
    """weights: "ckpts/epoch_*.pt" — one row per checkpoint with its step (the last number of the file name), the
    sweep's table and plot, and each checkpoint against the one before it, image by image."""
    tmp, spec = trained["tmp"], trained["spec"]
    ckpts = tmp / "ckpts"
    ckpts.mkdir()
    torch.manual_seed(1)
    model = TinyCLIP(16)
    images, tokens = _train_batch(trained["root"], model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for epoch in (1, 2, 10):  # 10 after 2: sorted by step, not by name
        _steps(model, opt, images, tokens, 3)
        torch.save(model.state_dict(), ckpts / f"epoch_{epoch}.pt")
    declared = json.dumps([{"model": "python:tests.models:tiny_clip", "id": "mine",
                            "weights": str(ckpts / "epoch_*.pt")}])
    out = tmp / "sweep"
    assert cli.main(["run", "zero_shot", "--out", str(out), "--cache-dir", str(tmp / "cache"),
                     "--set", f"models={declared}", "--set", f"datasets={json.dumps([spec])}"]) == 0
    zs = pd.read_csv(out / "zero_shot.csv")
    zs = zs[zs["dataset"] != "mean"]
    assert zs["model"].tolist() == ["mine@1", "mine@2", "mine@10"] and zs["step"].tolist() == [1, 2, 10]
    sweep = pd.read_csv(out / "zero_shot_sweep.csv")
    assert sweep["step"].tolist() == [1, 2, 10] and sweep["top1"].tolist() == zs["top1"].tolist()
    assert (out / "zero_shot_sweep.png").stat().st_size > 1000
    pairs = pd.read_csv(out / "zero_shot_sweep_pairs.csv")
    assert pairs[["step_a", "step_b"]].values.tolist() == [[1, 2], [2, 10]] and (pairs["images"] == 18).all()
    for _, p in pairs.iterrows():  # the discordant images account for the accuracy difference exactly
        assert p["difference"] == pytest.approx(100 * (p["only_b_correct"] - p["only_a_correct"]) / 18)
        assert 0 <= p["p_worse"] <= 1 and 0 <= p["mcnemar_p"] <= 1
    # linear_probe likewise: a row per checkpoint, its sweep table and pairs
    assert cli.main(["run", "linear_probe", "--out", str(out), "--cache-dir", str(tmp / "cache"),
                     "--set", f"models={declared}", "--set", f"datasets={json.dumps([spec])}"]) == 0
    lp = pd.read_csv(out / "linear_probe_sweep.csv")
    assert lp["step"].tolist() == [1, 2, 10] and len(pd.read_csv(out / "linear_probe_sweep_pairs.csv")) == 2
    missing = json.dumps([{"model": "python:tests.models:tiny_clip", "weights": str(ckpts / "nope_*.pt")}])
    assert cli.main(["run", "zero_shot", "--out", str(out), "--set", f"models={missing}",
                     "--set", f"datasets={json.dumps([spec])}"]) == 2


def test_library_and_reference_modules_in_memory():
    """A timm model (at the size it was built for, not its pretrained_cfg's 224), the reference ViT converted from
    it, an open_clip CLIP (its own preprocessing and BPE tokenizer) and the reference CLIP converted from it."""
    import open_clip
    import timm

    spec = {"name": "fashion_mnist", "test_per_class": 3, "train_per_class": 5}
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1, img_size=32)
    clip = open_clip.create_model("ViT-S-32", pretrained=None)
    for module, tasks, library in ((vit, ("linear_probe",), "timm"), (harness.from_timm(vit), ("linear_probe",),
                                                                      "reference"),
                                   (clip, ("zero_shot",), "open_clip"), (harness.from_open_clip(clip),
                                                                        ("zero_shot",), "reference")):
        rows = harness.evaluate(module, [spec], tasks=tasks)
        assert rows["library"].tolist() == [library] and (rows["images"] == 30).all()
        assert rows["top1"].between(0, 100).all()


def test_a_tensorboard_summary_writer_receives_the_metrics_with_the_step(trained, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in (3, 4):
        rows = harness.evaluate(trained["model"], [trained["spec"]], step=step, log=writer)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tag = f"imagefolder:{trained['root']}/classification/top1"
    scalars = events.Scalars(tag)
    assert [e.step for e in scalars] == [3, 4] and scalars[-1].value == pytest.approx(rows.iloc[0]["top1"])


def test_retrieval_sets_are_evaluated_and_their_captions_kept(trained, tmp_path):
    """A retrieval set (a local copy in the catalog's MSCOCO layout): recall both ways; a second call with the same
    weights decodes no image and embeds no caption again."""
    import datasets

    root = trained["root"]
    pictures = [Image.open(p).convert("RGB") for c in CLASSES for p in sorted((root / "val" / c).glob("*.png"))]
    captions = [[f"a photo of {NAMES[i // 6]}.", f"{NAMES[i // 6]}, number {i}"] for i in range(len(pictures))]
    folder = tmp_path / "coco" / "TEST" / "test"
    folder.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    datasets.Dataset.from_dict({"image": pictures, "caption": captions}, features=features).to_parquet(
        folder / "0000.parquet")
    spec = {"name": "mscoco", "root": str(tmp_path / "coco")}
    first = harness.evaluate(trained["model"], [spec])
    after_first = counters()
    second = harness.evaluate(trained["model"], [spec])
    assert counters()["decoded_images"] == after_first["decoded_images"]
    assert counters()["classifiers_built"] == after_first["classifiers_built"]
    row = first.iloc[0]
    assert row["task"] == "retrieval" and row["images"] == 18 and row["captions"] == 36
    assert 0 <= row["image_to_text_R@1"] <= 100 and row["mean_R@1"] == pytest.approx(
        (row["image_to_text_R@1"] + row["text_to_image_R@1"]) / 2)
    assert second.drop(columns="seconds").equals(first.drop(columns="seconds"))

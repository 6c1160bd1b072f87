"""One engine keyed by content (issue 40): the command line and harness.evaluate compute every row by one path, and
no cache answers for something it did not see.

The model is tests.models.ColourCLIP, whose right answers are known by hand: solid red, green and blue images are
classified right every time (top-1 100%), and with their colours inverted never (0%). Each hole a cache could fall
into is planted — a checkpoint or an image rewritten in place, two transforms that print alike, a freed object's
address taken by a new one, a text-side tensor held by the image tower changed in place, a buffer, a tokenizer, a
class-name mapping — and the answer must move as the right answer moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import harness
from harness import evaluation, models, tasks
from harness.tools import cli
from tests.models import COLOUR_VALUES, COLOURS, ColourCLIP, ColourTokenizer

PER_CLASS = 4


def write_colours(root: Path, per_class: int = PER_CLASS, size: int = 16) -> Path:
    """root/train/<colour>/*.png and root/val/<colour>/*.png: solid colour images, stored uncompressed (the same
    number of bytes whatever the colour, so that a rewrite in place keeps the file's size)."""
    for split in ("train", "val"):
        for name, value in zip(COLOURS, COLOUR_VALUES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), value).save(folder / f"{i}.png", compress_level=0)
    return root


def invert(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda v: 255 - v)


def colour_transform(inverted: bool):
    """The model's own preprocessing, with an inversion first or an identity first: two Composes that print alike."""
    first = T.Lambda(invert) if inverted else T.Lambda(lambda image: image)
    return T.Compose([first, T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


@pytest.fixture
def colours(tmp_path):
    root = write_colours(tmp_path / "colours")
    return {"root": root, "spec": {"name": f"imagefolder:{root}"}, "tmp": tmp_path}


def top1(model, spec, **kw) -> float:
    return float(harness.evaluate(model, [spec], **kw).iloc[0]["top1"])


# ------------------------------------------------------------------------------------------------ evaluate
def test_the_known_answers(colours):
    model = ColourCLIP()
    assert top1(model, colours["spec"]) == 100.0
    assert top1(model, colours["spec"], transform=colour_transform(inverted=True)) == 0.0


def test_two_transforms_that_print_alike_are_not_confused(colours):
    """Both print as Compose(Lambda(), Resize(...), ...): keyed by repr, the second got the first one's images.
    Fails on the code before issue 40 (100% where the answer is 0%)."""
    model = ColourCLIP()
    a, b = colour_transform(False), colour_transform(True)
    assert repr(a) == repr(b)
    assert top1(model, colours["spec"], transform=a) == 100.0
    assert top1(model, colours["spec"], transform=b) == 0.0


class NoRepr:
    """A user's transform object without a __repr__: it prints its address, which a later object may reuse."""

    def __init__(self, inverted: bool):
        self.inverted, self.rest = inverted, colour_transform(False)

    def __call__(self, image):
        return self.rest(invert(image) if self.inverted else image)


def test_an_address_a_new_object_reuses_is_not_taken_for_the_old_one(colours):
    """Fails on the code before issue 40: the freed object's address came back and its images with it."""
    model = ColourCLIP()
    for i in range(12):
        transform = NoRepr(inverted=bool(i % 2))
        assert top1(model, colours["spec"], transform=transform) == (0.0 if i % 2 else 100.0), i
        del transform


def test_a_text_side_tensor_the_image_tower_holds_changed_in_place_rebuilds_the_classifier(colours):
    """visual.basis is the text embeddings, held by the image tower. Fails on the code before issue 40 (its key
    hashed only the parameters outside the image tower: 100% where the answer is 0%)."""
    model = ColourCLIP()
    assert top1(model, colours["spec"]) == 100.0
    with torch.no_grad():
        model.visual.basis[:3] = model.visual.basis[[1, 2, 0]].clone()  # red's embedding is now green's ...
    assert top1(model, colours["spec"]) == 0.0


def test_a_buffer_the_text_side_reads_and_the_tokenizer_are_part_of_the_key(colours):
    model = ColourCLIP()
    assert top1(model, colours["spec"]) == 100.0
    model.text_sign.fill_(-1.0)  # a buffer: every text embedding negated
    assert top1(model, colours["spec"]) == 0.0
    model.text_sign.fill_(1.0)
    assert top1(model, colours["spec"]) == 100.0
    shifted = ColourTokenizer(["green", "blue", "red"])  # "red" -> blue's token, ...
    assert top1(model, colours["spec"], tokenizer=shifted) == 0.0
    assert top1(model, colours["spec"]) == 100.0


def test_a_layer_swapped_in_is_seen(colours):
    model = ColourCLIP()
    assert top1(model, colours["spec"]) == 100.0
    model.visual.basis = torch.nn.Parameter(model.visual.basis.detach()[[1, 2, 0, 3]].clone())
    assert top1(model, colours["spec"]) == 0.0


def test_unchanged_weights_reuse_the_classifier_and_the_images(colours):
    model = ColourCLIP()
    top1(model, colours["spec"])
    before = evaluation.counters()
    top1(model, colours["spec"])
    after = evaluation.counters()
    assert after["classifiers_built"] == before["classifiers_built"]
    assert after["decoded_images"] == before["decoded_images"]


def test_every_submodules_mode_comes_back_and_the_callers_autocast_and_grad_mode_do_not_leak(colours):
    """Fails on the code before issue 40: the whole model's mode was restored, so visual came back training."""
    model = ColourCLIP()
    model.train()
    model.visual.eval()
    plain = harness.evaluate(model, [colours["spec"]], tasks=("zero_shot", "linear_probe"))
    assert model.training and not model.visual.training
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = harness.evaluate(model, [colours["spec"]], tasks=("zero_shot", "linear_probe"))
    cols = ["top1", "top5", "mean_per_class_recall"]
    pd.testing.assert_frame_equal(plain[cols], inside[cols])


def test_a_bfloat16_model_gets_bfloat16_images(colours):
    """Fails on the code before issue 40: 'expected m1 and m2 to have the same dtype'."""
    import timm

    assert top1(ColourCLIP().to(torch.bfloat16), colours["spec"]) == 100.0
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, num_classes=0)
    rows = harness.evaluate(vit.to(torch.bfloat16), [colours["spec"]], tasks=("linear_probe",))
    assert rows.iloc[0]["top1"] >= 0


def test_an_image_rewritten_in_place_at_the_same_size_is_seen(colours):
    """Fails on the code before issue 40 (data fingerprints were path + size)."""
    model, root = ColourCLIP(), colours["root"]
    assert top1(model, colours["spec"]) == 100.0
    for path in sorted((root / "val" / "red").glob("*.png")):
        size = path.stat().st_size
        Image.new("RGB", (16, 16), (0, 0, 255)).save(path, compress_level=0)  # red's images now show blue
        assert path.stat().st_size == size
    assert top1(model, colours["spec"]) == pytest.approx(200 / 3)


def test_compiled_and_ddp_wrapped_modules_are_read_as_the_module_they_wrap(tmp_path):
    import timm
    import torch.distributed as dist

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0)
    plain = models.wrap(vit)
    compiled = models.wrap(torch.compile(vit))
    assert compiled.library == plain.library == "timm" and compiled.module is vit
    assert compiled.input_size == plain.input_size == (3, 32, 32)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = models.wrap(torch.nn.parallel.DistributedDataParallel(ColourCLIP()))
        assert ddp.library == "python" and ddp.clip_like and isinstance(ddp.module, ColourCLIP)
    finally:
        dist.destroy_process_group()


def test_a_set_larger_than_the_bound_is_streamed_within_it(tmp_path):
    """600 images of 64 × 64, preprocessed to 16 × 16: 1.84 MB as float32 (the old code's one tensor), 0.46 MB as
    uint8. With a 100 kB bound nothing is kept, a warning says so, and the call's peak of torch allocations stays
    within the bound and a few batches. Fails on the code before issue 40 (every image kept as float32 at once)."""
    from harness.tools.bench import peak_memory

    root = write_colours(tmp_path / "big", per_class=200, size=64)
    model, spec = ColourCLIP(), {"name": f"imagefolder:{root}"}
    evaluation.clear()
    batch = 16
    with pytest.warns(UserWarning, match="decoded again on every call"):
        harness.evaluate(model, [spec], cache_bytes=100_000, batch_size=batch, workers=0)
    assert evaluation._IMAGES.nbytes == 0
    peak = peak_memory(lambda: harness.evaluate(model, [spec], cache_bytes=100_000, batch_size=batch, workers=0),
                       torch.device("cpu"))
    per_batch = batch * 3 * 16 * 16 * 4  # one float32 batch
    assert peak < 100_000 + 8 * per_batch, peak  # 493 kB; the images whole as float32 would be 1.84 MB


def test_caption_embeddings_and_classifiers_are_evicted():
    store = tasks.TextStore(capacity=2)
    model = models.wrap(ColourCLIP())
    opts = tasks.Options(torch.device("cpu"), texts=store)
    for captions in (["red"], ["green"], ["blue"]):
        tasks.caption_embeddings(model, captions, opts)
    tasks.classifier(model, COLOURS, ["a {} thing"], opts)
    assert len(store.entries) == 2 and store.built == 4


# ------------------------------------------------------------------------------------------- the command line
def _run(suite: str, out: Path, cache: Path, model: dict, spec: dict) -> pd.DataFrame:
    assert cli.main(["run", suite, "--out", str(out), "--cache-dir", str(cache), "--set",
                     f"models={json.dumps([model])}", "--set", f"datasets={json.dumps([spec])}"]) == 0
    df = pd.read_csv(out / f"{suite}.csv")
    return df[df["dataset"] != "mean"]


def test_a_checkpoint_overwritten_in_place_is_evaluated_anew(colours):
    """Fails on the code before issue 40: the rerun with the same cache said 100% (the finished unit was keyed by
    the config, which names the path, not the file)."""
    tmp = colours["tmp"]
    ckpt = tmp / "ckpt.pt"
    model = ColourCLIP()
    torch.save(model.state_dict(), ckpt)
    declared = {"model": "python:tests.models:colour_clip", "weights": str(ckpt)}
    assert _run("zero_shot", tmp / "out", tmp / "cache", declared, colours["spec"]).iloc[0]["top1"] == 100.0
    with torch.no_grad():
        model.visual.basis[:3] = model.visual.basis[[1, 2, 0]].clone()
    torch.save(model.state_dict(), ckpt)  # the same path, other weights
    assert _run("zero_shot", tmp / "out", tmp / "cache", declared, colours["spec"]).iloc[0]["top1"] == 0.0


def test_images_rewritten_in_place_are_seen_by_a_rerun(colours):
    tmp, root = colours["tmp"], colours["root"]
    declared = {"model": "python:tests.models:colour_clip"}
    assert _run("zero_shot", tmp / "out", tmp / "cache", declared, colours["spec"]).iloc[0]["top1"] == 100.0
    for path in sorted((root / "val" / "red").glob("*.png")):
        Image.new("RGB", (16, 16), (0, 0, 255)).save(path, compress_level=0)
    assert _run("zero_shot", tmp / "out", tmp / "cache", declared, colours["spec"]).iloc[0]["top1"] == \
        pytest.approx(200 / 3)


def test_a_manifests_class_name_mapping_is_part_of_the_key(colours):
    """Labels given as class names map to indices by the declared class names: reordering those names changes
    every label. Fails on the code before issue 40 (the feature cache gave back the first run's labels)."""
    tmp, root = colours["tmp"], colours["root"]
    manifest = tmp / "list.csv"
    lines = ["path,label,split"] + [f"{p},{p.parent.name},{p.parent.parent.name.replace('val', 'test')}"
                                    for p in sorted(root.rglob("*.png"))]
    manifest.write_text("\n".join(lines) + "\n")
    declared = {"model": "python:tests.models:colour_clip"}
    right = _run("zero_shot", tmp / "out", tmp / "cache", declared,
                 {"name": f"manifest:{manifest}", "classnames": COLOURS})
    assert right.iloc[0]["top1"] == 100.0
    # the same files, the names in another order: "red" images are now labelled with the index of "green"'s name
    # and classified by "green"'s prompt: still all right
    again = _run("zero_shot", tmp / "out", tmp / "cache", declared,
                 {"name": f"manifest:{manifest}", "classnames": ["green", "red", "blue"]})
    assert again.iloc[0]["top1"] == 100.0


# ------------------------------------------------------------------- the command line equals harness.evaluate
def _equal_rows(cli_rows: pd.DataFrame, ours: pd.DataFrame, metrics: list[str]) -> None:
    for metric in metrics:
        np.testing.assert_allclose(ours[metric].to_numpy(float), cli_rows[metric].to_numpy(float), atol=1e-9,
                                   err_msg=metric)


@pytest.mark.parametrize("kind", ["timm", "open_clip", "python", "hf"])
def test_the_command_line_and_evaluate_give_equal_rows(kind, colours):
    """The same model on the same data through `python -m harness run` (its checkpoint file) and harness.evaluate
    (the module in memory): every metric equal (the same code, the same process: round-off does not enter), the
    reference twin's too where the library has one."""
    import open_clip
    import timm
    from safetensors.torch import save_file

    tmp, spec = colours["tmp"], colours["spec"]
    torch.manual_seed(0)
    if kind == "timm":
        kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 0}
        module = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
        save_file(module.state_dict(), tmp / "w.safetensors")
        declared = {"model": "timm:vit_tiny_patch16_224", "kwargs": kwargs, "weights": str(tmp / "w.safetensors"),
                    "with_reference": True}
    elif kind == "open_clip":
        kwargs = {"vision_cfg": {"layers": 1, "width": 64, "image_size": 32, "patch_size": 16, "head_width": 32},
                  "text_cfg": {"layers": 1, "width": 64, "heads": 2}, "embed_dim": 32}
        module = open_clip.create_model("ViT-B-32", pretrained=None, **kwargs).eval()
        torch.save(module.state_dict(), tmp / "w.pt")
        declared = {"model": "open_clip:ViT-B-32", "kwargs": kwargs, "weights": str(tmp / "w.pt"),
                    "with_reference": True}
    elif kind == "python":
        module = ColourCLIP().eval()
        torch.save(module.state_dict(), tmp / "w.pt")
        declared = {"model": "python:tests.models:colour_clip", "weights": str(tmp / "w.pt")}
    else:
        import transformers as tf

        from tests.test_hf import TINY, clip_tokenizer

        module = tf.CLIPModel(tf.CLIPConfig(text_config=dict(TINY), vision_config=dict(TINY, image_size=32,
                                                                                        patch_size=8),
                                            projection_dim=16)).eval()
        module.save_pretrained(tmp / "hf")
        tf.CLIPProcessor(tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                         clip_tokenizer()).save_pretrained(tmp / "hf")
        module = tf.CLIPModel.from_pretrained(tmp / "hf").eval()  # in memory, read from its folder
        declared = {"model": f"hf:{tmp / 'hf'}", "with_reference": True}
    wrapped = models.wrap(module)
    twin = [models.reference(wrapped)] if declared.get("with_reference") else []
    metrics = ["top1", "top5", "mean_per_class_recall"]
    probe_spec = {**spec, "train_per_class": PER_CLASS}
    lp = _run("linear_probe", tmp / "out", tmp / "cache", declared, probe_spec)
    ours = pd.concat([harness.evaluate(m, [probe_spec], tasks=("linear_probe",)) for m in [wrapped, *twin]])
    _equal_rows(lp, ours, [*metrics, "strength"])
    if wrapped.clip_like:
        zs = _run("zero_shot", tmp / "out", tmp / "cache", declared, spec)
        ours = pd.concat([harness.evaluate(m, [spec]) for m in [wrapped, *twin]])
        _equal_rows(zs, ours, metrics)

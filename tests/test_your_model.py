"""Your model, your data: a user's python: models (tests/models.py) on an imagefolder: data set with class-name and
template files, through linear_probe and zero_shot from the command line — the README's block, run as written."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness import data, models
from harness.infra.results import REPO_ROOT
from harness.infra.suite import ConfigError

CLASSES = ["cat", "golden_retriever", "sports_car"]
NAMES = ["a cat", "a golden retriever", "a sports car"]


def write_my_data(root, per_class=6, size=32):
    """An ImageFolder of 3 classes whose images differ by colour (so that a probe can tell them apart), a class-name
    file and a template file in CLIP_benchmark's format."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n")
    (root / "templates.json").write_text(json.dumps({"my_data": ["a photo of {c}.", "a picture of {c}."],
                                                     "other_set": ["ignored {c}"]}))
    return root


def readme_block() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Your model, your data"):]
    start = section.index("```bash") + len("```bash")
    return section[start: section.index("```", start)]


@pytest.mark.slow
def test_readme_block_runs_your_models_on_your_data(tmp_path):
    write_my_data(tmp_path / "my_data")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1",  # `python` is this environment's, as in an activated venv
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-euc", readme_block()], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    probe = pd.read_csv(tmp_path / "my_results" / "linear_probe.csv")
    probe = probe[probe["dataset"] != "mean"]
    assert probe["model"].tolist() == ["tests.models:tiny", "vit_tiny_patch16_224"]
    assert probe["library"].tolist() == ["python", "timm"]
    assert (probe["dataset"] == "imagefolder:my_data").all()
    assert (probe["train_images"] == 18).all() and (probe["test_images"] == 18).all()
    # the colours tell the classes apart: a probe on the tiny encoder's mean-pooled features beats chance (33%)
    assert probe.iloc[0]["top1"] > 60
    zs = pd.read_csv(tmp_path / "my_results" / "zero_shot.csv")
    zs = zs[zs["dataset"] != "mean"]
    assert len(zs) == 1 and zs.iloc[0]["model"] == "tests.models:tiny_clip" and zs.iloc[0]["library"] == "python"
    assert zs.iloc[0]["templates"] == "templates.json (2)" and zs.iloc[0]["images"] == 18
    assert zs.iloc[0]["classifier_max_abs_diff"] < 1e-6  # harness's classifier equals open_clip's builder on it
    assert "train:clip_fmnist" not in set(zs.get("unit", []))  # nothing was trained
    assert not list((tmp_path / ".cache" / "vitclip-harness").rglob("zero_shot/*.safetensors"))


def test_your_model_resolves_with_its_own_preprocessing_and_tokenizer():
    encoder = models.resolve("python:tests.models:tiny")
    assert encoder.library == "python" and not encoder.clip_like and encoder.input_size == (3, 32, 32)
    image = Image.fromarray(np.zeros((50, 70, 3), np.uint8))
    assert encoder.transform(image).shape == (3, 32, 32)  # its data_config: 32 pixels, crop_pct 1
    assert encoder.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    clip = models.resolve({"model": "python:tests.models:tiny_clip", "kwargs": {"dim": 8}})
    assert clip.clip_like and clip.encode_text(clip.tokenizer(["a cat"])).shape == (1, 8)
    # a CLIP-like model that says nothing of its preprocessing: timm's 224-pixel defaults (README), in zero_shot too
    plain = models.resolve("python:tests.models:plain_clip")
    assert plain.clip_like and plain.input_size == (3, 224, 224) and plain.transform(image).shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="cannot be imported"):
        models.check("python:no_such_module:build")
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        models.check("python:tests.models:nope")
    with pytest.raises(ConfigError, match="expected 'LIBRARY:NAME'"):
        models.parse("vit_tiny_patch16_224")  # a bare name: which library?


def test_imagefolder_with_class_names_and_templates_from_files(tmp_path):
    root = write_my_data(tmp_path / "my_data")
    spec = {"name": f"imagefolder:{root}", "classnames": str(root / "names.txt"),
            "templates": str(root / "templates.json")}
    test = data.load(spec, "test")
    assert test.classnames == NAMES and len(test) == 18 and test.split == "test"
    # the template file is CLIP_benchmark's, keyed by data set: the entry for the folder's name, {c} read as {}
    assert test.templates == ["a photo of {}.", "a picture of {}."]
    plain = data.load(f"imagefolder:{root}", "train")
    assert plain.classnames == ["cat", "golden retriever", "sports car"]  # folder names, "_" read as " "
    assert plain.templates == ["a photo of a {}."]  # CLIP's plain prompt when none is given


def test_manifest_with_a_split_column_and_class_names(tmp_path):
    root = write_my_data(tmp_path / "my_data")
    lines = [{"path": f"{split}/{c}/{i}.png", "label": c, "split": "train" if split == "train" else "test"}
             for split in ("train", "val") for c in CLASSES for i in range(6)]
    (root / "list.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    train = data.load(f"manifest:{root / 'list.jsonl'}", "train")
    assert len(train) == 18 and train.classnames == ["cat", "golden retriever", "sports car"]
    assert train.labels.tolist() == [c for c in range(3) for _ in range(6)]
    csv = root / "list.csv"
    csv.write_text("path,label\n" + "".join(f"val/{c}/{i}.png,{k}\n" for k, c in enumerate(CLASSES) for i in range(2)))
    test = data.load({"name": f"manifest:{csv}", "classnames": NAMES}, "test")  # indices into the given names
    assert test.classnames == NAMES and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="no split column: it serves as a test set only"):
        data.check(f"manifest:{csv}", ["train"])


@pytest.mark.parametrize("layout, message", [
    ("missing", "no such folder"),
    ("no val", "no test/ or val/ folder for the test split; expected .*/train/<class>/<image>"),
    ("different classes", "train and test hold different class folders"),
])
def test_an_unrecognised_folder_is_refused_saying_what_was_expected(tmp_path, layout, message):
    root = tmp_path / "x"
    if layout != "missing":
        (root / "train" / "cat").mkdir(parents=True)
    if layout == "different classes":
        (root / "val" / "dog").mkdir(parents=True)
    with pytest.raises(ConfigError, match=message):
        data.check(f"imagefolder:{root}", ["train", "test"])


def test_class_specific_prompts_average_each_classs_own(tmp_path):
    """A CuPL-style template file ({data set: {class: prompts}}): each class's column is the mean of its own
    prompts' embeddings, as with one list per class."""
    from harness import zero_shot_classifier

    clip = models.resolve("python:tests.models:tiny_clip")
    path = tmp_path / "cupl.json"
    prompts = {"a cat": ["a small cat.", "a cat on a mat."], "a dog": ["a dog."]}
    path.write_text(json.dumps({"pets": prompts}))
    per_class = data.texts.templates(str(path), "pets")
    got = zero_shot_classifier(clip.module, clip.tokenizer, ["a cat", "a dog"], per_class)
    for c, name in enumerate(["a cat", "a dog"]):
        alone = zero_shot_classifier(clip.module, clip.tokenizer, [name], [p.replace("{", "{{").replace("}", "}}")
                                                                          for p in prompts[name]])
        assert torch.allclose(got[:, c], alone[:, 0], atol=1e-6)
    assert data.texts.templates(str(path), "cars") == per_class  # one entry: it serves any data set
    path.write_text(json.dumps({"pets": prompts, "birds": {"a crow": ["a crow."]}}))
    with pytest.raises(ConfigError, match="no entry for data set 'cars' \\(its keys: birds, pets\\)"):
        data.texts.templates(str(path), "cars")


def test_readme_block_is_the_one_tested():
    block = textwrap.dedent(readme_block())
    assert "python:tests.models:tiny" in block and "imagefolder:my_data" in block and "templates.json" in block

"""Faults, concurrency and bad input: nothing lost, nothing silently wrong, no cache file that runs code.

The figures results/README.md states come from these tests: bad inputs refused (BAD_INPUTS), damaged cache entries
detected (DAMAGE × the three cache folders), concurrent runs (2), kills survived (KILLS).
"""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from harness import data
from harness.infra import cache
from harness.infra.results import REPO_ROOT
from harness.methods.features import extract
from harness.tools import cli
from tests.test_cli import TINY_SUITE
from tests.test_suite_data_scale import SUITE as TINY_SCALE

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def suites_dir(tmp_path, **suites):
    d = tmp_path / "suites"
    d.mkdir(exist_ok=True)
    for name, text in suites.items():
        (d / f"{name}.py").write_text(textwrap.dedent(text))
    return d


class Poison:
    """A pickle whose loading runs a shell command: what a hostile cache file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_poison(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Poison(marker)))


# ------------------------------------------------------------------------------------------------ bad input
def _imagenet_without_val(root):
    (root / "train" / "n01440764").mkdir(parents=True)


def _imagenet_with_a_stray_class(root):
    for split in ("train", "val"):
        for c in ("n01440764", "cats"):
            (root / split / c).mkdir(parents=True)


def _weights_of(name, path, **kwargs):
    torch.save(timm.create_model(name, **kwargs).state_dict(), path)
    return path


def _non_weights_only_pickle(path):
    torch.save({"state_dict": timm.create_model("vit_tiny_patch16_224", depth=1).state_dict(), "opt": Poison("x")},
               path)
    return path


# input -> (arguments after `run tiny_agreement --device cpu`, how the data/file is made, expected message)
BAD_INPUTS = {
    "unknown dtype": (["--dtype", "float8"], None, "--dtype float8: unknown dtype; choose from float64"),
    "unknown model": (["--set", 'models=["timm:vit_tiny_patch16_22"]'], None,
                      "timm has no model 'vit_tiny_patch16_22' (closest known: vit_tiny_patch16_224"),
    "config key that does not exist": (["--set", "random_input=2"], None,
                                       "has the config key(s) random_input (did you mean random_inputs?)"),
    "unknown profile": (["--profile", "huge"], None, "invalid choice: 'huge'"),
    "weight file for another architecture": (
        ["--set", "weights={path}"], lambda p: _weights_of("vit_small_patch16_224", p / "small.pth", depth=1),
        "does not fit timm model 'vit_tiny_patch16_224': shapes differ"),
    "weight file that is not weights-only": (
        ["--set", "weights={path}"], lambda p: _non_weights_only_pickle(p / "w.pth"),
        "is a pickle that is not weights-only"),
    "ImageFolder with a missing split": (["--suite", "tiny_zs", "--set", "datasets.0.root={path}"],
                                         lambda p: (_imagenet_without_val(p / "in"), p / "in")[1],
                                         "in/val does not exist"),
    "class folder not in the class list": (["--suite", "tiny_zs", "--set", "datasets.0.root={path}"],
                                           lambda p: (_imagenet_with_a_stray_class(p / "in"), p / "in")[1],
                                           "class folder(s) that are not ImageNet WordNet ids: cats"),
}

TINY_ZS = '''
NAME = "tiny_zs"
VERSION = 1
EVALUATOR = "zero_shot"

def get_config(profile):
    return {"datasets": [{"name": "imagenet", "root": None, "templates": ["a photo of a {}."]}],
            "published_source": "", "batch_size": 8,
            "models": [{"id": "s32", "model": "open_clip:ViT-S-32", "weights": "random"}]}
'''


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_any_work(case, tmp_path, capsys):
    args, make, expected = BAD_INPUTS[case]
    made = make(tmp_path) if make else None
    suite = "tiny_agreement"
    if args[:1] == ["--suite"]:
        suite, args = args[1], args[2:]
    args = [a.replace("{path}", str(made)) for a in args]
    d = suites_dir(tmp_path, tiny_agreement=TINY_SUITE, tiny_zs=TINY_ZS)
    out, cache_dir = tmp_path / "out", tmp_path / "cache"
    argv = ["run", suite, "--device", "cpu", "--out", str(out), "--cache-dir", str(cache_dir), "--suites-dir", str(d),
            *args]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusal (unknown choice)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err[-2000:]
    assert not out.exists() and not (cache_dir / "units").exists()  # refused before any work started


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "I;16"])
def test_unusual_image_modes_are_converted_not_skipped(mode, tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 40, 40)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.full((20, 30), 50000, np.uint16)  # 16-bit grey 50000/65535 ≈ 194/255
        image = Image.fromarray(gray)
        assert image.mode.startswith("I;16")
    elif mode == "LA":
        image = image.convert("L").convert("LA")
    else:
        image = image.convert(mode)
    path = tmp_path / f"odd.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    out = data.images.to_pil({"path": str(path), "bytes": None}, reading="scaled")  # your own folders' reading
    assert out.mode == "RGB" and out.size == (30, 20)
    px = np.asarray(out, dtype=int)
    if mode == "I;16":
        assert abs(px[0, 0, 0] - 194) <= 1  # scaled to 8 bits, not clipped to white
        # the peers' reading (PIL's convert, as CLIP_benchmark, webdataset and torchvision read): clipped
        assert np.asarray(data.images.to_pil({"path": str(path), "bytes": None}, reading="convert")).min() == 255
    else:
        assert px[:, :15].mean() < px[:, 15:].mean() + 100 and px[0, 20].max() < 30  # the dark half stays dark


def test_decompression_bomb_is_skipped_with_the_fix_named(tmp_path, monkeypatch):
    from tests.test_data import write_image_folder

    write_image_folder(tmp_path, per_class=1, corrupt=False)
    val = data.imagenet.load("validation", root=tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 48 // 3)  # the 40×48 images are now "bombs"
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        feats = extract(lambda x: x.flatten(1), val, lambda im: torch.zeros(3), model_id="p", weights="w")
    assert len(feats.labels) == 0 and len(feats.skipped) == 3
    assert all("decompression-bomb limit" in s and "MAX_IMAGE_PIXELS" in s for s in feats.skipped)


# ------------------------------------------------------------------------------------------- damaged entries
@pytest.fixture(scope="module")
def fmnist():
    test = data.load("fashion_mnist", "test")
    return test, data.images.balanced_subset(test.labels, 6, seed=0)


def _truncate(path, marker):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path, marker):
    path.write_bytes(b"")


def _wrong_shape(path, marker):
    tensors, meta = cache.read_tensors(path)
    cache.save_tensors(path, {**tensors, "features": tensors["features"][:-3]}, meta)


def _other_code(path, marker):
    torch.save({"features": np.zeros((60, 4), np.float32)}, path)  # a plain (pickled) torch file


def _flipped_byte(path, marker):
    b = bytearray(path.read_bytes())
    b[-5] ^= 0xFF
    path.write_bytes(bytes(b))


DAMAGE = {"truncated": _truncate, "zero bytes": _empty, "wrong shape": _wrong_shape,
          "written by other code": _other_code, "a flipped byte": _flipped_byte, "poisoned pickle": write_poison}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_feature_chunk_is_detected_and_recomputed(kind, fmnist, tmp_path):
    test, rows = fmnist
    proj = torch.randn(28 * 28, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(model_id="proj", weights="w", indices=rows, chunk_size=40, cache_dir=tmp_path)
    clean = extract(lambda x: x.flatten(1) @ proj, test, data.images.GrayscaleTransform(), **kw)
    chunks = sorted((tmp_path / "features").rglob("chunk_*.safetensors"))
    assert len(chunks) == 2
    marker = tmp_path / "code_ran"
    DAMAGE[kind](chunks[0], marker)
    with pytest.warns(UserWarning, match=f"damaged cache entry.*{chunks[0].name}"):
        again = extract(lambda x: x.flatten(1) @ proj, test, data.images.GrayscaleTransform(), **kw)
    assert (again.from_cache, again.computed) == (1, 1)
    np.testing.assert_array_equal(again.features, clean.features)
    assert not marker.exists()  # nothing in the cache ran
    third = extract(lambda x: 1 / 0, test, data.images.GrayscaleTransform(), **kw)  # repaired: read back whole
    assert third.from_cache == 2


def run_tiny_scale(tmp_path, out, cache_dir, extra=(), env=None):
    d = suites_dir(tmp_path, tiny_scale=TINY_SCALE)
    args = [sys.executable, "-m", "harness", "run", "tiny_scale", "--device", "cpu", "--out", str(out), "--cache-dir",
            str(cache_dir), "--suites-dir", str(d), *extra]
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def comparable(df):
    """A table's columns that must equal a clean run's (not times, dates, checkpoint paths)."""
    drop = [c for c in df if "seconds" in c or c in ("time_utc", "checkpoint", "unit_seconds")]
    return df.drop(columns=drop)


@pytest.fixture(scope="module")
def clean_scale(tmp_path_factory):
    """The tiny data-scale suite run once, uninterrupted, in a fresh cache: the reference tables."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = run_tiny_scale(tmp, tmp / "out", tmp / "cache")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return {t: pd.read_csv(tmp / "out" / f"{t}.csv") for t in ("data_scale", "data_scale_runs")}, tmp


def assert_same_tables(out, clean):
    for name, df in clean.items():
        got = pd.read_csv(out / f"{name}.csv")
        pd.testing.assert_frame_equal(comparable(got), comparable(df), check_exact=False, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "poisoned pickle"])
def test_damaged_unit_and_checkpoint_are_detected_and_recomputed(kind, clean_scale, tmp_path):
    clean, clean_tmp = clean_scale
    import shutil

    shutil.copytree(clean_tmp / "cache", tmp_path / "cache")
    unit = sorted((tmp_path / "cache" / "units").rglob("*.json"))[0]
    runs = clean["data_scale_runs"]  # the damaged unit's own checkpoint, moved to this copy of the cache
    row = runs[runs["unit"].str.replace(r"[^A-Za-z0-9_.=-]+", "_", regex=True) == unit.stem].iloc[0]
    ckpt = tmp_path / "cache" / Path(row["checkpoint"]).relative_to(clean_tmp / "cache")
    marker = tmp_path / "code_ran"
    DAMAGE[kind](unit, marker)
    DAMAGE[kind](ckpt, marker)
    proc = run_tiny_scale(tmp_path, tmp_path / "out", tmp_path / "cache")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"damaged cache entry, recomputing it: {unit}" in err
    assert "reused 9 of 10" in out  # the damaged unit ran again, the others were read back
    assert not marker.exists()
    assert_same_tables(tmp_path / "out", clean)
    from harness.infra import checkpoints
    from harness.methods.scale_runs import build_architecture

    checkpoints.load(ckpt, lambda m: build_architecture(m["arch"]))  # rewritten whole by the rerun


# ------------------------------------------------------------------------------------------------ concurrency
@pytest.mark.slow
def test_two_runs_at_once_share_cache_and_results(clean_scale, tmp_path):
    clean, _ = clean_scale
    procs = [run_tiny_scale(tmp_path, tmp_path / "out", tmp_path / "cache") for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_same_tables(tmp_path / "out", clean)
    # every unit was computed once: the two runs together trained 10 runs, not 20
    trained = sum(10 - int(o.split("reused ")[1].split(" of")[0]) if "reused" in o else 10 for o, _ in outputs)
    assert trained == 10, outputs
    assert not list(tmp_path.rglob("*.tmp*"))


# ------------------------------------------------------------------------------------------------ killed runs
KILLS = 3


def finished_units(cache_dir) -> int:
    """Units of the run finished so far, as the cache holds them (each written atomically when its unit ends; a
    hidden .NAME.*.tmp.json is one being written)."""
    units = cache_dir / "units"
    return len([p for p in units.rglob("*.json") if not p.name.startswith(".")]) if units.exists() else 0


def test_a_killed_writers_temporaries_are_removed_by_the_next_holder_of_the_lock(tmp_path):
    """SIGKILL during an atomic write leaves a hidden temporary beside the entry; the next process to hold the
    entry's lock (every writer of it does) removes it, and nobody else's."""
    path = tmp_path / "units" / "vit_5_0.json"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from harness.infra import cache
        def write(tmp):
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        cache.atomic_write(Path({str(path)!r}), write)
        """)], env=ENV)
    assert killed.returncode == -signal.SIGKILL and not path.exists()
    left = cache.temporaries(path)
    assert len(left) == 1 and left[0].name.startswith(".vit_5_0.") and left[0].name.endswith(".tmp.json")
    other = tmp_path / "units" / ".vit_6_0.x.tmp.json"  # another entry's: not this lock's to remove
    other.write_text("busy")
    with cache.lock(path):
        assert cache.temporaries(path) == [] and other.exists()


@pytest.mark.slow
def test_killed_at_deterministic_points_then_resumed(clean_scale, tmp_path):
    """SIGKILL right after the 2nd, 4th and 6th of the 10 units is seen finished on disk (each run resumes the
    last and is killed again), then a run to the end: the tables equal an uninterrupted run's. The kill points
    are counts of finished units, not times, so they land mid-run on a machine of any speed."""
    clean, _ = clean_scale
    out, cache_dir = tmp_path / "out", tmp_path / "cache"
    total = len(clean["data_scale_runs"])
    for k in (2, 4, 6)[:KILLS]:
        proc = run_tiny_scale(tmp_path, out, cache_dir)
        while finished_units(cache_dir) < k:
            assert proc.poll() is None, proc.communicate()[1][-3000:]  # it must not end before unit k
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL  # killed, not finished: units were left
        assert k <= finished_units(cache_dir) < total and not out.exists()
    proc = run_tiny_scale(tmp_path, out, cache_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert finished_units(cache_dir) == total
    assert_same_tables(out, clean)
    assert not list(tmp_path.rglob("*.tmp*"))


# ------------------------------------------------------------------------------------------------ divergence
def test_diverging_training_stops_the_run_and_writes_no_table(tmp_path):
    proc = run_tiny_scale(tmp_path, tmp_path / "out", tmp_path / "cache", ["--set", "recipe.lr=1e30"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "unit 'vit:5:0' failed (TrainingDiverged: vit n=50 seed=0: the loss is nan at step" in err
    assert "Lower the learning rate" in err
    assert not (tmp_path / "out").exists()  # no NaN reaches a table: no table at all

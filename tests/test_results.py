import pandas as pd
import pytest

from harness.infra import cache, results


def test_write_table_csv_markdown_and_index(tmp_path):
    df = pd.DataFrame({"model": ["a", "b"], "rel_err": [1.5e-7, 2e-13], "result": ["pass", "pass"]})
    df = df.assign(**results.provenance({"x": 1}, "cpu", seed=3))
    paths = results.write_table(df, tmp_path, "demo", "Demo table", ["model", "rel_err", "result"], "A note.")
    assert [p.name for p in paths] == ["demo.csv", "demo.md"]
    back = pd.read_csv(tmp_path / "demo.csv")
    assert back["rel_err"].tolist() == [1.5e-7, 2e-13]
    assert {"git_sha", "torch", "timm", "device", "seed", "config_hash"} <= set(back.columns)
    md = (tmp_path / "demo.md").read_text()
    assert "# Demo table" in md and "A note." in md and "1.50e-07" in md and "Produced by" in md
    results.write_index(tmp_path, {"demo": "what demo holds"})
    assert "[demo](demo.md)" in (tmp_path / "README.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    results.atomic_write_text(path, "old\n")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", boom)
    with pytest.raises(OSError):
        results.atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_config_hash_ignores_key_order():
    assert results.stable_hash({"a": 1, "b": [1, 2]}) == results.stable_hash({"b": [1, 2], "a": 1})
    assert results.stable_hash({"a": 1}) != results.stable_hash({"a": 2})


def test_code_hash_follows_imports_and_nothing_else(tmp_path, monkeypatch):
    # a throwaway copy of harness/ so that editing a module cannot touch the real one
    import shutil

    shutil.copytree(results.REPO_ROOT / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    before = results.code_hash("harness.evals.agreement")
    with open(tmp_path / "harness" / "linear_probe.py", "a") as f:  # agreement does not import it
        f.write("\n# edited\n")
    assert results.code_hash("harness.evals.agreement") == before
    with open(tmp_path / "harness" / "reference" / "attention.py", "a") as f:  # imported via the converters
        f.write("\n# edited\n")
    assert results.code_hash("harness.evals.agreement") != before

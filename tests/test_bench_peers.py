"""`bench --parts peers`'s linear probe: CLIP_benchmark 1.6.2's own evaluate beside harness.linear_probe.

The timing is never judged here (benchmarks measure; tests don't time). What is: that the peer's code really ran
(its weight-decay sweep chose a value of its own grid, which only 1.6.x's probe has), that both probes learned the
same features (well above chance), that the CPU shim CLIP_benchmark needs is undone, and that a missing peer is
refused before any work.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from harness.infra.suite import ConfigError
from harness.tools import bench_peers


@pytest.mark.slow
def test_the_probe_rows_come_from_both_tools():
    table = bench_peers.probe(torch.device("cpu"), per_class=20, rounds=1)
    assert {(r["model"], r["implementation"]) for r in table} == {
        (m, i) for m in ("pixels (L2-normalised)", "synthetic 512-d, 100 classes (L2-normalised)")
        for i in ("clip_benchmark", "harness")}
    rows = {(r["model"].split()[0], r["implementation"]): r for r in table}
    peer, ours = rows["pixels", "clip_benchmark"], rows["pixels", "harness"]
    assert peer["train_images"] == ours["train_images"] == 200 and peer["images"] == ours["images"] == 200
    # clip_benchmark 1.6.2's grid is np.logspace(-6, 2, 97); the row prints its choice to 3 significant digits
    chosen = float(peer["regularisation"].removeprefix("weight decay "))
    assert np.isclose(np.logspace(-6, 2, 97), chosen, rtol=5e-3).any(), peer["regularisation"]
    assert ours["regularisation"].startswith("λ ")
    # 10 classes, chance 10%: Fashion-MNIST pixels give ~70% with 200 training images to either probe
    assert peer["top1"] > 40 and ours["top1"] > 40, (peer["top1"], ours["top1"])
    assert peer["seconds"] > 0 and ours["speed_vs_clip_benchmark"] > 0
    # the synthetic set at its quick size: 100 classes × 20 training images; chance 1%
    peer, ours = rows["synthetic", "clip_benchmark"], rows["synthetic", "harness"]
    assert peer["classes"] == ours["classes"] == 100 and ours["train_images"] == 2000
    assert peer["top1"] > 10 and ours["top1"] > 10, (peer["top1"], ours["top1"])


def test_the_cpu_shim_is_undone():
    before = torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to
    with bench_peers._cuda_on_cpu():
        assert torch.ones(2).cuda().device.type == "cpu"
        assert torch.ones(2).to("cuda", torch.float64).dtype == torch.float64
        assert next(torch.nn.Linear(2, 2).cuda().parameters()).device.type == "cpu"
    assert (torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to) == before
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, AssertionError)):
            torch.ones(2).cuda()


def test_a_missing_peer_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(ConfigError, match="pip install --no-deps --target"):
        bench_peers.check_probe_peer()
    from harness.tools import bench

    with pytest.raises(ConfigError, match="clip_benchmark==1.6.2"):
        bench.main(["--parts", "peers", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()

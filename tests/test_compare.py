"""harness.compare on a candidate written from scratch here (its own names, separate q/k/v, einsum attention, a
Conv2d patch embedding), correct and with planted bugs: the report must pin each bug to its block and stage."""

import math
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import harness
from harness.infra.results import REPO_ROOT
from harness.tools.compare import MappingError, compare, propose_mapping

DEPTH, DIM, HEADS, PATCH, SIZE = 3, 64, 4, 8, 32


class Attention(nn.Module):
    def __init__(self, dim, heads, bugs):
        super().__init__()
        self.heads, self.bugs = heads, bugs
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        h = self.heads
        q, k, v = (f(x).view(B, N, h, D // h) for f in (self.q, self.k, self.v))
        scale = 1 / (D // h) if "scale" in self.bugs else 1 / math.sqrt(D // h)
        att = (torch.einsum("bnhd,bmhd->bhnm", q, k) * scale).softmax(-1)
        return self.out(torch.einsum("bhnm,bmhd->bnhd", att, v).reshape(B, N, D))


class FusedAttention(nn.Module):
    """One fused projection, unpacked in the order k, q, v: the 'q and k swapped' bug."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        k, q, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class OffBackward(torch.autograd.Function):
    """The identity forward; a backward 1% off (the kind of bug a hand-written backward kernel has)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


class Layer(nn.Module):
    def __init__(self, dim, heads, bugs, eps=1e-6):
        super().__init__()
        self.bugs = bugs
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = FusedAttention(dim, heads) if "swap_qk" in bugs else Attention(dim, heads, bugs)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        act = nn.GELU(approximate="tanh") if "tanh_gelu" in bugs else nn.GELU()
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), act, nn.Linear(4 * dim, dim))

    def forward(self, x):
        a = self.attn(self.ln1(x))
        x = x + (a.detach() if "detach_attn" in self.bugs else a)  # forward exact, attention gets no gradient
        f = self.ff(self.ln2(x))
        return x + (OffBackward.apply(f) if "off_backward" in self.bugs else f)


class MyViT(nn.Module):
    """A ViT written differently from harness/reference: its own names, a Conv2d patch embedding."""

    def __init__(self, bugs=(), eps_block=None, classes=10, backward_block=None):
        super().__init__()
        n = (SIZE // PATCH) ** 2
        self.embed = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.bugs = bugs
        self.pos = nn.Parameter(torch.zeros(1, n if "pos_before_cls" in bugs else n + 1, DIM))
        self.layers = nn.ModuleList([Layer(DIM, HEADS, bugs if backward_block in (None, i) else (),
                                           1e-5 if i == eps_block else 1e-6) for i in range(DEPTH)])
        self.final_norm = nn.LayerNorm(DIM, eps=1e-6)
        self.classifier = nn.Linear(DIM, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if "pos_before_cls" in self.bugs:  # position embedding on the patches only, [CLS] prepended after
            x = torch.cat([self.cls.expand(len(x), -1, -1), x + self.pos], 1)
        else:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.final_norm(x)[:, 0])


def library():
    return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                             num_heads=HEADS, num_classes=10).eval()


def rows(report, dtype="float64"):
    return report.df[(report.df.dtype == dtype) & (report.df.check != "gradients")]


def test_a_correct_candidate_written_differently_passes(capsys):
    report = compare(MyViT(), library())
    printed = capsys.readouterr().out
    assert "layers.0.attn.q.weight   <- blocks.0.attn.qkv.weight[q]  (name)" in printed  # the mapping, printed
    assert "embed.weight" in printed and "patch_embed.proj.weight" in printed
    assert report.first_divergence is None, report.summary
    stages = set(rows(report).stage)
    assert {"embed", "patch_embed.proj", "blocks.0.norm1", "blocks.0.attn", "blocks.0.mlp", "blocks.2", "norm",
            "head", "output"} <= stages
    assert (report.df.result == "pass").all() and set(report.df.dtype) == {"float64", "float32"}
    g = report.df[(report.df.check == "gradients") & (report.df.stage == "all parameters")]
    assert len(g) == 2 and (g.stages_failing == 0).all() and report.first_backward_divergence is None
    stages = report.df[(report.df.check == "gradients") & (report.df.stage != "all parameters")]
    assert list(dict.fromkeys(stages.stage)) == ["(before the blocks)", "layers.0", "layers.1", "layers.2",
                                                 "(after the blocks)"]
    assert rows(report).rel_err.max() < 1e-12


# bug -> (candidate, mapping, the stage the report must name first)
def _pos_mapping(state):
    """The library's weights for the buggy candidate: its position table has no [CLS] row."""
    cand = propose_mapping(MyViT().state_dict(), state).apply(
        state, {k: v.shape for k, v in MyViT().state_dict().items()})
    del cand["pos"]
    return {**cand, "pos": state["pos_embed"][:, 1:]}


BUGS = {
    "LayerNorm eps 1e-5 in block 1": (lambda: MyViT(eps_block=1), None, "blocks.1.norm1"),
    "attention scale 1/d": (lambda: MyViT(bugs=("scale",)), None, "blocks.0.attn"),
    "q and k swapped in the fused projection": (lambda: MyViT(bugs=("swap_qk",)), None, "blocks.0.attn"),
    "tanh GELU": (lambda: MyViT(bugs=("tanh_gelu",)), None, "blocks.0.mlp"),
    "position embedding before [CLS]": (lambda: MyViT(bugs=("pos_before_cls",)), _pos_mapping, "embed"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_is_pinned_to_its_block_and_stage(bug):
    make, mapping, where = BUGS[bug]
    report = compare(make(), library(), mapping=mapping, verbose=False)
    assert report.first_divergence is not None, report.summary
    assert report.first_divergence["stage"] == where, report.summary
    assert report.first_divergence["dtype"] == "float64"
    # every comparison before it agrees to float64 round-off
    r = rows(report)
    order = list(dict.fromkeys(r.stage))
    before = r[r.stage.isin(order[: order.index(report.first_divergence["module"])])]
    assert len(before) and before.rel_err.max() < 1e-12
    assert f"First divergence: library stage `{where}`" in report.summary


BACKWARD_BUGS = {
    "attention branch detached from the graph in block 1": ("detach_attn", 1),
    "a custom autograd function whose backward is 1% off in block 2's MLP": ("off_backward", 2),
}


@pytest.mark.parametrize("bug", list(BACKWARD_BUGS))
def test_backward_only_bug_is_pinned_to_its_block(bug):
    """The forward pass is exact (no stage departs), the gradients are not: the first backward divergence names the
    block, the stages after it agree, and the command's verdict (Report.diverged) counts it."""
    flag, block = BACKWARD_BUGS[bug]
    report = compare(MyViT(bugs=(flag,), backward_block=block), library(), verbose=False)
    assert report.first_divergence is None, report.summary  # every forward stage agrees
    back = report.first_backward_divergence
    assert back is not None and back["stage"] == f"layers.{block}" and back["dtype"] == "float64", report.summary
    assert back["worst_param"].startswith(f"layers.{block}.")
    assert report.diverged and f"First backward divergence: stage `layers.{block}`" in report.summary
    g = report.df[(report.df.check == "gradients") & (report.df.dtype == "float64")].set_index("stage")
    after = [f"layers.{i}" for i in range(block + 1, DEPTH)] + ["(after the blocks)"]
    assert (g.loc[after, "result"] == "pass").all()
    assert (g.loc[[f"layers.{block}", "all parameters"], "result"] == "fail").all()


def test_text_tower_without_causal_mask_is_pinned():
    import open_clip

    from tests.test_clip import small_open_clip

    lib = small_open_clip("ViT-S-32", layers=2)
    cand = harness.from_open_clip(lib)

    def no_mask(self, tokens):  # the candidate's text tower, bidirectional
        B, T = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:T]
        for block in self.blocks:
            x = block(x, is_causal=False)
        x = self.ln_final(x)
        return x[torch.arange(B), tokens.argmax(-1)] @ self.text_projection

    cand.text.forward = no_mask.__get__(cand.text)
    tokens = open_clip.get_tokenizer("ViT-S-32")(["a photo of a cat.", "a dog."])
    report = compare(cand, lib, inputs={"images": torch.randn(2, 3, 224, 224, dtype=torch.float64),
                                        "tokens": tokens}, verbose=False)
    first = report.first_divergence
    assert first is not None and first["stage"] == "transformer.resblocks.0.attn", report.summary
    visual = rows(report)[rows(report).stage.str.startswith("visual")]
    assert (visual.result == "pass").all()  # the image tower is not touched by the bug


def test_ambiguous_or_incomplete_mapping_is_refused():
    class Extra(MyViT):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(DIM))  # nothing in the library to fill it

    with pytest.raises(MappingError, match="extra .*: none"):
        propose_mapping(Extra().state_dict(), library().state_dict())
    with pytest.raises(MappingError, match="library tensors unused: .*head.bias"):
        compare(MyViT(), library(), mapping={"embed.weight": "patch_embed.proj.weight"}, verbose=False)


CANDIDATE_MODULE = '''
import sys
sys.path.insert(0, {tests!r})
from test_compare import MyViT

def build():
    return MyViT(bugs=("tanh_gelu",))


def build_backward():
    return MyViT(bugs=("off_backward",), backward_block=2)
'''


@pytest.mark.slow
def test_command_line_writes_the_report(tmp_path):
    (tmp_path / "my_candidates.py").write_text(textwrap.dedent(CANDIDATE_MODULE.format(tests=str(REPO_ROOT / "tests"))))
    kwargs = f'{{"img_size": {SIZE}, "patch_size": {PATCH}, "embed_dim": {DIM}, "depth": {DEPTH}, "num_heads": ' \
             f'{HEADS}, "num_classes": 10}}'
    proc = subprocess.run([sys.executable, "-m", "harness", "compare", "--candidate", "python:my_candidates:build",
                           "--library", "timm:vit_tiny_patch16_224", "--library-kwargs", kwargs, "--out",
                           str(tmp_path / "cmp")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{REPO_ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin",
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]  # a divergence was found
    assert "First divergence: library stage `blocks.0.mlp`" in proc.stdout
    df = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert {"stage", "candidate_stage", "dtype", "rel_err", "result"} <= set(df.columns)
    assert "First divergence" in (tmp_path / "cmp" / "compare.md").read_text()
    for extra, code in (([], 1), (["--allow-failures"], 0)):  # a backward-only bug fails the command too
        proc = subprocess.run([sys.executable, "-m", "harness", "compare", "--candidate",
                               "python:my_candidates:build_backward", "--library", "timm:vit_tiny_patch16_224",
                               "--library-kwargs", kwargs, *extra],
                              cwd=tmp_path, capture_output=True, text=True,
                              env={"PYTHONPATH": f"{REPO_ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin",
                                   "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == code, proc.stderr[-2000:]
        assert "No stage departs" in proc.stdout and "First backward divergence: stage `layers.2`" in proc.stdout


@pytest.mark.slow
def test_readme_example_runs_and_finds_the_planted_bug(capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Check your own implementation"):]
    code = section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 9)]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example, run as written
    report = scope["report"]
    assert report.first_divergence["stage"] == "blocks.0.mlp"
    assert report.first_divergence["candidate_stage"] == "layers.0.ff"
    assert "First divergence: library stage `blocks.0.mlp` (candidate `layers.0.ff`" in capsys.readouterr().out

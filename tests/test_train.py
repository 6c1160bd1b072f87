"""harness.methods.train: the gradients the data-scale models train with are float64's to round-off, and the optimizer
helper is torch's AdamW (its fused kernel where the device has one)."""

import copy

import torch
import torch.nn.functional as F

from harness.methods.train import adamw
from harness.reference.cnn import SmallResNet


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


def test_resnet_float32_gradients_are_float64_to_round_off():
    """The data-scale ResNet in the layout train() runs it: every parameter's float32 gradient within 1e-4 (relative,
    as a vector) of the float64 gradient of the same weights and batch. Measured ~5e-6 on this CPU; float32
    round-off through ten layers and a batch mean stays far below 1e-4 on any x86-64 BLAS. For the record, the
    channels_last layout measured 3e-3 to 1.4e-2 here (torch 2.14.1): its BatchNorm, 10-70x less accurate in that
    layout, flips one ReLU unit at zero (1 of 200,704 in the second stage), and every gradient before it moves;
    that, and a heap corrupted by 4-channel convolutions, is why train() does not use it."""
    torch.manual_seed(0)
    model = SmallResNet(in_chans=1, num_classes=10, widths=(8, 16, 32), blocks_per_stage=1)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    truth = _grads(copy.deepcopy(model).double(), x.double(), y)
    for (name, _), g, t in zip(model.named_parameters(), _grads(model, x, y), truth):
        err = ((g.double() - t).norm() / t.norm()).item()
        assert err <= 1e-4, (name, err)


def test_adamw_helper_is_torch_adamw():
    """adamw() picks torch's fused kernel on a CPU and updates like the loop implementation: equal to float32
    round-off after five steps (1e-5 relative: one rounding per step and operation, carried through the gradients)."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b = copy.deepcopy(a)
    opt_a = adamw([{"params": list(a.parameters()), "weight_decay": 0.05}], lr=1e-2, betas=(0.9, 0.999))
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999), foreach=False)
    assert opt_a.defaults["fused"] is True
    for _ in range(5):
        x = torch.randn(4, 16)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _augment_by_indexing(x: torch.Tensor, recipe, g: torch.Generator) -> torch.Tensor:
    """The augmentation written out plainly (train.augment before it became two gathers): pad, take each image's
    crop by advanced indexing, then flip the chosen crops."""
    B, C, H, W = x.shape
    if recipe.pad:
        p = recipe.pad
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (B,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=g)
        rows, cols = dy[:, None] + torch.arange(H)[None], dx[:, None] + torch.arange(W)[None]
        b, c = torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None]
        x = padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    if recipe.flip:
        flip = torch.rand(B, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def test_augment_gives_the_crops_and_flips_it_draws():
    """augment() equals the plain pad-index-flip formulation exactly (it only moves pixels), for every combination
    of crop and flip, and leaves the generator where that formulation does (the batches after it are the same)."""
    from harness.methods.train import Recipe, augment

    for shape in [(128, 1, 28, 28), (16, 3, 28, 28), (5, 2, 9, 7)]:
        x = torch.randn(*shape)
        for recipe in [Recipe(), Recipe(pad=0), Recipe(flip=False), Recipe(pad=0, flip=False), Recipe(pad=4)]:
            g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
            for _ in range(3):
                assert torch.equal(augment(x, recipe, g), _augment_by_indexing(x, recipe, h)), (shape, recipe)
            assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))

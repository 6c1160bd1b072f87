"""harness.train: the gradients the data-scale models train with are float64's to round-off, and the optimizer
helper is torch's AdamW (its fused kernel where the device has one)."""

import copy

import torch
import torch.nn.functional as F

from harness.cnn import SmallResNet
from harness.train import adamw


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


def test_resnet_float32_gradients_are_float64_to_round_off():
    """The data-scale ResNet in the layout train() runs it: every parameter's float32 gradient within 1e-4 (relative,
    as a vector) of the float64 gradient of the same weights and batch. Measured ~5e-6 on this CPU; float32
    round-off through ten layers and a batch mean stays far below 1e-4 on any x86-64 BLAS. For the record, the
    channels_last layout measured 3e-3 to 1.4e-2 here (torch 2.14.1): that is why train() does not use it."""
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

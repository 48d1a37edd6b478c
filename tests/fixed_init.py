"""Deterministic weights and inputs for expected-number tests (torchtune's `fixed_init` idea).

Nothing here draws random numbers: every value is a closed-form function of its index, so the
expected numbers stored in the tests depend only on the code under test (not on torch's RNG, nor on
other code that consumes it first). Not a test module.
"""

import math
from typing import Dict, Sequence

import torch
from torch import nn


def fixed_tensor(shape: Sequence[int], phase: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """`scale * sin(0.7 * i + phase)` over the flat index `i`, reshaped to `shape` (float32)."""
    n = math.prod(shape)
    return (scale * torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + phase)).float().reshape(*shape)


def fixed_init_(model: nn.Module) -> nn.Module:
    """Set every parameter and floating buffer of `model` by formula (in place); returns `model`.

    Norm-layer weights are `1 + 0.1 sin(.)` and their biases `0.1 sin(.)`; other tensors with a fan-in
    are `sin(.) / sqrt(fan_in)` so activations stay O(1); BatchNorm running stats are mean 0.05 sin(.),
    var 1 + 0.2 |sin(.)|. The phase differs per tensor (its position in `named_parameters`).
    """
    norm_types = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)
    norm_params = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if id(p) in norm_params:
                value = fixed_tensor(p.shape, i, 0.1) + (1.0 if name.endswith("weight") else 0.0)
            elif p.dim() > 1:
                value = fixed_tensor(p.shape, i, 1.0 / math.sqrt(p[0].numel()))
            else:
                value = fixed_tensor(p.shape, i, 0.1)
            p.copy_(value)
        for i, (name, b) in enumerate(model.named_buffers()):
            if name.endswith("running_mean"):
                b.copy_(fixed_tensor(b.shape, i, 0.05))
            elif name.endswith("running_var"):
                b.copy_(1.0 + fixed_tensor(b.shape, i, 0.2).abs())
    return model


def summary(x: torch.Tensor, picks: int = 4) -> Dict[str, float]:
    """A few numbers that change when any part of `x` changes: moments, abs-sum checksum, samples."""
    x = x.detach().double().flatten()
    idx = torch.linspace(0, x.numel() - 1, picks).long()
    out = {"mean": float(x.mean()), "std": float(x.std()), "abs_sum": float(x.abs().sum()),
           "weighted": float((x * torch.sin(torch.arange(x.numel(), dtype=torch.float64))).sum())}
    out.update({f"x[{int(i)}]": float(x[i]) for i in idx})
    return out


def assert_summary(x: torch.Tensor, expected: Dict[str, float], rtol: float = 1e-4) -> None:
    """Compare `summary(x)` with stored numbers, relative to the tensor's scale.

    Each value may differ by `rtol` times its own magnitude, plus `rtol` times the mean |x| for
    per-element values or times sum |x| for the two sums (which can cancel to near zero). The message
    shows every mismatch and all new values (to update the stored numbers after an intended change).
    """
    got = summary(x, picks=sum(k.startswith("x[") for k in expected))
    abs_sum = got["abs_sum"]
    mean_abs = abs_sum / max(x.numel(), 1)
    bad = {}
    for key, want in expected.items():
        floor = rtol * (abs_sum if key in ("abs_sum", "weighted") else mean_abs)
        if key not in got or not math.isclose(got[key], want, rel_tol=rtol, abs_tol=floor):
            bad[key] = (got.get(key), want)
    assert not bad, f"(got, expected) differ: {bad}\nall values now: {got}"

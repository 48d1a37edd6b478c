"""A simulated accelerator on CPU: catches wrong-device tensors and host syncs without a GPU.

`DeviceGuard` is a `torch.overrides.TorchFunctionMode` (not a test module). Tensors handed to
`guard.place(...)` (a model's parameters and buffers, the batch) count as living on a simulated
accelerator, `cuda:0`; everything computed from them inherits that. Inside the guard such tensors
report `x.device == cuda:0` (and `x.is_cuda`), so model code that passes `device=x.device` to a
factory (`torch.zeros`, `torch.arange`, `torch.tensor`, `torch.rand`, `x.new_*`, `.to(...)`)
creates accelerator tensors, while a factory without `device=` creates a host tensor, exactly as on
a GPU. The computation itself runs on the CPU.

Recorded, with the innermost call site outside torch:

* `mixed-devices`: an op whose tensor arguments include accelerator tensors and host tensors with
  one or more dimensions. CUDA rejects most of these ("Expected all tensors to be on the same
  device", "indices should be either on cpu or on the same device"); the rest (host index tensors
  into an accelerator tensor) are hidden host-to-device copies. Host 0-dim tensors are allowed, as
  CUDA kernels take them as scalars. `copy_` is a legal cross-device copy and is not flagged.
* `host-sync`: an op that makes the host wait for an accelerator tensor's value: `.item()`,
  `.tolist()`, `bool()/int()/float()`, `.cpu()`/`.to("cpu")`, `.numpy()`, `nonzero`,
  `masked_select`, `unique`, boolean-mask indexing, `repeat_interleave` with tensor repeats and
  no `output_size`.

Only calls made by Python code (this project, fairseq) are inspected; torch's own kernels and the
autograd engine are trusted. oneDNN is switched off inside the guard because code may take its
accelerator branch (e.g. the ResNet stem's native `Conv3d`), and oneDNN's Conv3d corrupted the heap
in CPU training with torch 2.13.
"""

import os
import re
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["ACCELERATOR", "DeviceEvent", "DeviceGuard", "DeviceGuardError"]

ACCELERATOR = torch.device("cuda", 0)
_HOST = torch.device("cpu")
_DEVICE_GET = torch.Tensor.device.__get__
_IS_CUDA_GET = torch.Tensor.is_cuda.__get__
_SYNC_METHODS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                 "masked_select", "unique", "unique_consecutive", "argwhere", "__array__"}
_TRANSFER_METHODS = {"to", "cuda", "cpu", "copy_", "type_as"}
_SKIP_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)) + os.sep + "device_guard")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DeviceGuardError(AssertionError):
    """Raised by `DeviceGuard.check` when a forbidden device event was recorded."""


@dataclass(frozen=True)
class DeviceEvent:
    kind: str  # "mixed-devices" or "host-sync"
    op: str  # torch function name, e.g. "__getitem__", "where", "item"
    where: str  # "path/to/file.py:123 in func" (innermost frame outside torch)
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.op} at {self.where}" + (f" ({self.detail})" if self.detail else "")


def _flatten(obj: Any) -> Iterable[Any]:
    """Leaves of nested tuples / lists / dicts (tensors and everything else)."""
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _flatten(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _flatten(item)
    else:
        yield obj


def _is_accelerator(device: Any) -> Optional[bool]:
    """True for the simulated accelerator, False for the host, None for "not a device"."""
    if isinstance(device, bool):
        return None
    if isinstance(device, int):  # `.to(0)` / `.cuda(0)`: a CUDA ordinal
        return True
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            return None
    if isinstance(device, torch.device):
        return device.type != "cpu"
    return None


def _call_site() -> str:
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_SKIP_DIRS) and "/torch/" not in frame.filename:
            path = os.path.relpath(frame.filename, _REPO) if frame.filename.startswith(_REPO) else frame.filename
            return f"{path}:{frame.lineno} in {frame.name}"
    return "<unknown>"


class DeviceGuard(TorchFunctionMode):
    """Simulated accelerator; see the module docstring. Usage:

        guard = DeviceGuard()
        guard.place(model, batch)
        with guard:
            loss = criterion(model, batch)[0]
            loss.backward()
        guard.check(allowed_syncs=["avhubert/modules/transformer.py"])
    """

    def __init__(self) -> None:
        super().__init__()
        self._acc = WeakTensorKeyDictionary()
        self.events: List[DeviceEvent] = []
        self._mkldnn: Optional[Any] = None

    # -------------------------------------------------------------- placement
    def place(self, *objs: Any) -> None:
        """Mark tensors (nested in tuples/lists/dicts) and modules' parameters/buffers as on the accelerator."""
        for obj in objs:
            if isinstance(obj, torch.nn.Module):
                for t in list(obj.parameters()) + list(obj.buffers()):
                    self._acc[t] = True
                continue
            for leaf in _flatten(obj):
                if isinstance(leaf, torch.Tensor):
                    self._acc[leaf] = True
                elif isinstance(leaf, torch.nn.Module):
                    self.place(leaf)

    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` lives on the simulated accelerator."""
        return tensor in self._acc

    # -------------------------------------------------------------- results
    @property
    def violations(self) -> List[DeviceEvent]:
        return [e for e in self.events if e.kind == "mixed-devices"]

    @property
    def syncs(self) -> List[DeviceEvent]:
        return [e for e in self.events if e.kind == "host-sync"]

    def check(self, allowed_syncs: Iterable[str] = ()) -> None:
        """Raise `DeviceGuardError` on any mixed-device op, or a host sync whose call site matches
        none of the `allowed_syncs` regexes (searched in "path:line in function")."""
        allowed = [re.compile(a) for a in allowed_syncs]
        bad = self.violations + [e for e in self.syncs if not any(a.search(e.where) for a in allowed)]
        if bad:
            lines = sorted({str(e) for e in bad})
            raise DeviceGuardError(f"{len(bad)} device problem(s):\n  " + "\n  ".join(lines))

    # -------------------------------------------------------------- mode
    def __enter__(self) -> "DeviceGuard":
        self._mkldnn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.backends.mkldnn.enabled = self._mkldnn

    def _record(self, kind: str, func: Callable, detail: str = "") -> None:
        self.events.append(DeviceEvent(kind, getattr(func, "__name__", str(func)), _call_site(), detail))

    def _translate(self, name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict, Optional[bool]]:
        """Replace simulated-accelerator devices by the host; return the requested placement."""
        target: Optional[bool] = None
        if "device" in kwargs and kwargs["device"] is not None:
            target = _is_accelerator(kwargs["device"])
            if target is not None:
                kwargs = {**kwargs, "device": _HOST}
        if name in ("to", "cuda"):
            new_args = []
            for i, a in enumerate(args):
                where = _is_accelerator(a) if i > 0 and not isinstance(a, torch.Tensor) else None
                if where is not None:
                    target, a = where, _HOST
                new_args.append(a)
            args = tuple(new_args)
            if name == "cuda":
                target = True
        if name in ("to", "type_as") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            target = args[1] in self._acc  # `.to(other)`: other's device
        if name == "cpu":
            target = False
        return args, kwargs, target

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func == _DEVICE_GET:
            return ACCELERATOR if args[0] in self._acc else func(*args)
        if func == _IS_CUDA_GET:
            return args[0] in self._acc
        name = getattr(func, "__name__", "")
        args, kwargs, target = self._translate(name, args, kwargs)
        tensors = [t for t in _flatten((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_acc = [t in self._acc for t in tensors]
        if any(on_acc):
            host = [t for t, acc in zip(tensors, on_acc) if not acc and t.dim() > 0]
            if host and name not in _TRANSFER_METHODS:
                shapes = ", ".join(str(tuple(t.shape)) for t in host)
                self._record("mixed-devices", func, f"host tensor(s) {shapes} with accelerator tensors")
            if self._is_sync(name, args, kwargs, target, on_acc):
                self._record("host-sync", func)
        out = func(*args, **kwargs)
        if out is (args[0] if args else None) and name.endswith("_") and not name.startswith("__"):
            return out  # in-place op: the tensor stays where it is
        acc_out = target if target is not None else any(on_acc)
        if isinstance(out, torch.Tensor) and target is not None and (out in self._acc) != acc_out:
            out = out.view_as(out)  # `.to(device)` returned its input: a new alias carries the new place
        if acc_out and name not in ("tolist", "numpy", "item"):
            for leaf in _flatten(out):
                if isinstance(leaf, torch.Tensor):
                    self._acc[leaf] = True
        return out

    def _is_sync(self, name: str, args: tuple, kwargs: dict, target: Optional[bool], on_acc: List[bool]) -> bool:
        first_acc = bool(args) and isinstance(args[0], torch.Tensor) and args[0] in self._acc
        if name in _SYNC_METHODS or (name in ("cpu", "to") and target is False):
            return first_acc
        if name == "where" and len(args) + len(kwargs) == 1:
            return first_acc
        if name == "repeat_interleave":
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            return isinstance(repeats, torch.Tensor) and repeats in self._acc and kwargs.get("output_size") is None
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1]
            for leaf in _flatten(index):
                if isinstance(leaf, torch.Tensor) and leaf in self._acc and leaf.dtype in (torch.bool, torch.uint8):
                    return True
        return False

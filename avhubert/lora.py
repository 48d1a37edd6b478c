"""LoRA adapters on plain torch modules through `peft`, and checkpoints that hold only what was trained.

Generic (no AV-HuBERT specifics), so any model of the plugin can use it:

- `apply_lora(module, r, alpha, dropout, targets)` wraps the matching `Linear` / `Conv1d-3d` /
  `Embedding` sub-modules of `module` with peft LoRA layers (`peft.inject_adapter_in_model`, so the
  module object and its class stay the same) and freezes every other parameter of `module`. A target
  pattern matches a module name (relative to `module`) that equals it, ends with `.` + it, or that it
  matches as a whole regular expression; a pattern matching nothing is an error naming it and listing
  module names. Wrapped layers keep their weights under `<name>.base_layer.*` and add
  `<name>.lora_A.default.weight` / `<name>.lora_B.default.weight` (B starts at zero: the wrapped
  module computes exactly what it did before training).
- `parameter_report(model)`: trainable / total parameters, per top-level part (a shared / tied
  parameter counts once: `unique_parameters`).
- `lora_state_dict(model)`: the state dict without the frozen parameters (trained parameters and all
  buffers; a frozen tied parameter under none of its names), i.e. what a LoRA checkpoint stores.
- `merge_lora(module)`: folds every adapter into its base weight (`W + B A * alpha / r`) and puts the
  plain layer back, so the state-dict keys are those of a model that never had LoRA.
- `AdapterCheckpointMixin` (for a `BaseFairseqModel`): once `lora_base` is set, `state_dict()` leaves
  out the frozen base parameters and adds the base checkpoint's sha256 (`lora_base_sha256`, 32 bytes
  as a uint8 tensor); `load_state_dict()` accepts such a dict after checking that digest against the
  base the model was rebuilt from, so fairseq's trainer (resume) and `load_model_ensemble_and_task`
  work unchanged.

`peft` (and the `transformers` it imports, ~10 s) is only imported when LoRA is used.
"""

import hashlib
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LoraTargetError", "LoraBaseError", "BaseReference", "SUPPORTED_TYPES", "match_targets", "apply_lora",
           "unique_parameters", "parameter_counts", "parameter_report", "frozen_parameter_names", "lora_state_dict",
           "merge_lora", "has_lora", "file_sha256", "require_base_file", "AdapterCheckpointMixin", "BASE_DIGEST_KEY"]

# module types peft's LoRA wraps (peft also knows MultiheadAttention and transformers' Conv1D; not used here)
SUPPORTED_TYPES: Tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
BASE_DIGEST_KEY = "lora_base_sha256"
_LIST_AT_MOST = 16


class LoraTargetError(ValueError):
    """A LoRA target pattern that selects no module LoRA can wrap."""


class LoraBaseError(ValueError):
    """The base checkpoint a LoRA checkpoint refers to is missing or is not the one it was trained on."""


@dataclass(frozen=True)
class BaseReference:
    """The frozen base weights of a LoRA model: the file they were loaded from and its sha256."""

    path: str
    sha256: str


def file_sha256(path: str, chunk: int = 16 << 20) -> str:
    """Hex sha256 of the file at `path` (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _name_examples(names: Iterable[str]) -> str:
    """Distinct module names with layer indices folded to `N` (`encoder.layers.N.fc1`), one per leaf
    name first (q_proj, fc1, conv1, ...) so the list shows every kind of module, at most 16 of them."""
    by_leaf: "OrderedDict[str, List[str]]" = OrderedDict()
    for name in names:
        folded = re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name)
        group = by_leaf.setdefault(name.rsplit(".", 1)[-1], [])
        if folded not in group:
            group.append(folded)
    ordered = [g[i] for i in range(max(map(len, by_leaf.values()), default=0)) for g in by_leaf.values() if i < len(g)]
    shown = ordered[:_LIST_AT_MOST]
    more = f", ... ({len(ordered) - len(shown)} more)" if len(ordered) > len(shown) else ""
    return ", ".join(shown) + more


def _matches(pattern: str, name: str, regex: Optional["re.Pattern[str]"]) -> bool:
    return name == pattern or name.endswith("." + pattern) or (regex is not None and regex.fullmatch(name) is not None)


def match_targets(module: nn.Module, targets: Sequence[str], exclude: Optional[Mapping[str, str]] = None) -> List[str]:
    """Names (relative to `module`, in module order) of the wrappable sub-modules the patterns select.

    `exclude` maps names that must not be wrapped to the reason (logged when a pattern selects them).
    Raises `LoraTargetError` for an empty target list and for each pattern that selects nothing
    wrappable, naming the pattern and listing module names it could have used.
    """
    exclude = dict(exclude or {})
    if not targets:
        raise LoraTargetError("LoRA needs at least one target pattern (e.g. [q_proj, k_proj, v_proj, out_proj])")
    named = [(n, m) for n, m in module.named_modules() if n]
    wrappable = [n for n, m in named if isinstance(m, SUPPORTED_TYPES) and n not in exclude]
    chosen: Set[str] = set()
    for pattern in targets:
        try:
            regex: Optional[re.Pattern[str]] = re.compile(pattern)
        except re.error:
            regex = None  # still usable as a plain name or suffix
        hits = [n for n in wrappable if _matches(pattern, n, regex)]
        skipped = [n for n in exclude if _matches(pattern, n, regex)]
        for name in skipped:
            logger.warning("LoRA target %r: not wrapping %s (%s)", pattern, name, exclude[name])
        if not hits:
            others = [f"{n} ({type(m).__name__})" for n, m in named if _matches(pattern, n, regex) and n not in skipped]
            why = (f"it matches only modules LoRA cannot wrap: {', '.join(others[:_LIST_AT_MOST])}" if others else
                   f"it matches only {', '.join(skipped)}, which cannot take an adapter ({exclude[skipped[0]]})" if skipped
                   else "it matches no module")
            raise LoraTargetError(
                f"LoRA target {pattern!r}: {why}. A target is a module name, a suffix after a '.', or a regular "
                f"expression matching a whole name; wrappable modules ({'/'.join(t.__name__ for t in SUPPORTED_TYPES)}) "
                f"of {type(module).__name__} are: {_name_examples(wrappable)}"
            )
        chosen.update(hits)
    return [n for n in wrappable if n in chosen]


def apply_lora(module: nn.Module, r: int, alpha: float, dropout: float, targets: Sequence[str],
               exclude: Optional[Mapping[str, str]] = None) -> nn.Module:
    """Wrap the sub-modules of `module` that `targets` select with LoRA adapters (rank `r`, scale
    `alpha / r`, `dropout` on the adapter input) in place, and freeze every other parameter of
    `module`. Returns `module` (the same object)."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got r={r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    names = match_targets(module, targets, exclude)
    from peft import LoraConfig, inject_adapter_in_model  # heavy import: only when LoRA is used

    # one exact regex over the chosen names: peft's list form would also match longer names by suffix
    pattern = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern), module)
    if hasattr(module, "peft_config"):  # peft notes its config on the module; the caller's config holds it
        del module.peft_config
    for layer in _lora_layers(module):  # new sub-modules start in training mode: follow the wrapped layer
        layer.train(layer.get_base_layer().training)
    for name, param in module.named_parameters():
        param.requires_grad_(".lora_" in f".{name}")
    logger.info("LoRA r=%d alpha=%g dropout=%g on %d modules: %s", r, alpha, dropout, len(names), _name_examples(names))
    return module


def has_lora(module: nn.Module) -> bool:
    """Whether `module` holds peft LoRA layers (without importing peft)."""
    return any(".lora_" in f".{n}" for n, _ in module.named_parameters())


def unique_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """`(name, parameter)` once per tensor: a shared (tied) parameter under its first name only, also when
    two parameter objects view the same memory (same storage address, shape, strides, dtype, device)."""
    seen: Set[Tuple[Any, ...]] = set()
    out: List[Tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():  # already one entry per parameter object
        if not param.is_meta and param.numel() > 0:
            key = (param.device, param.data_ptr(), tuple(param.shape), param.stride(), param.dtype)
            if key in seen:
                continue
            seen.add(key)
        out.append((name, param))
    return out


def parameter_counts(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    """`{part: (trainable, total)}` per top-level child (parameters directly on `model` under `""`);
    a shared (tied) parameter counts once, in the part of its first name."""
    out: Dict[str, List[int]] = {}
    for name, param in unique_parameters(model):
        part = name.split(".", 1)[0] if "." in name else ""
        counts = out.setdefault(part, [0, 0])
        counts[0] += param.numel() if param.requires_grad else 0
        counts[1] += param.numel()
    return {k: (v[0], v[1]) for k, v in out.items()}


def parameter_report(model: nn.Module) -> str:
    """One line: `trainable parameters: T of N (P%); part: t of n (adapters a), ...`."""
    counts = parameter_counts(model)
    trainable, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    named = unique_parameters(model)
    adapters = {p: sum(v.numel() for n, v in named if n.split(".", 1)[0] == p and ".lora_" in f".{n}") for p in counts}
    parts = [f"{part or '(top)'}: {t:,} of {n:,}" + (f" (adapters {adapters[part]:,})" if adapters[part] else "")
             for part, (t, n) in counts.items()]
    share = 100.0 * trainable / max(total, 1)
    return f"trainable parameters: {trainable:,} of {total:,} ({share:.2f}%); " + "; ".join(parts)


def frozen_parameter_names(model: nn.Module) -> List[str]:
    """State-dict names of the parameters that do not train (`requires_grad=False`), each once; a shared
    (tied) frozen parameter with all of its names, as `state_dict()` holds it under each of them."""
    return [n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad]


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """`model.state_dict()` without the frozen parameters: trained parameters and every buffer."""
    frozen = set(frozen_parameter_names(model))
    return {k: v for k, v in nn.Module.state_dict(model).items() if k not in frozen}


def _is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA wrapper (without importing peft): it has adapters and a wrapped base layer."""
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def _lora_layers(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules() if _is_lora_layer(m)]


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of `module` into its base layer and put the plain layer back in place.

    Afterwards `module` has no peft layer left and its state-dict keys are those of the model before
    `apply_lora`. Parameter trainability is left as it was. Returns `module` (the same object).
    """
    for name, layer in [(n, m) for n, m in module.named_modules() if _is_lora_layer(m)]:
        base = layer.get_base_layer()
        layer.merge(safe_merge=not base.weight.is_meta)  # safe: raises on NaN/inf in the merged weight
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, base)
    return module


def _digest_tensor(sha256: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(sha256)), dtype=torch.uint8)


def _digest_hex(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return bytes(value.to(torch.uint8).tolist()).hex()
    return str(value)


class AdapterCheckpointMixin:
    """Adapter-only checkpoints for a fairseq model with LoRA (list it before `BaseFairseqModel`).

    While `lora_base` is None the model behaves as usual. Once set (by whoever applied LoRA and loaded
    the frozen weights from `lora_base.path`), `state_dict()` holds only the trained parameters, the
    buffers and `lora_base_sha256`, and `load_state_dict()` expects exactly that: the frozen base comes
    from the file the model was built from, whose digest must equal the one saved with the adapters.
    """

    lora_base: Optional[BaseReference] = None

    def merge_adapters(self) -> Optional[BaseReference]:
        """Fold the adapters into full weights (`merge_lora`), make every parameter trainable again and
        drop the base reference: from then on `state_dict()` is the plain, full one. Returns the old
        reference (None when the model had no LoRA)."""
        base, self.lora_base = self.lora_base, None
        if base is not None:
            merge_lora(self)  # type: ignore[arg-type]
            for param in self.parameters():  # type: ignore[attr-defined]
                param.requires_grad_(True)
        return base

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)  # type: ignore[misc]
        if self.lora_base is None:
            return out
        for name in frozen_parameter_names(self):  # type: ignore[arg-type]
            out.pop(prefix + name, None)
        out[prefix + BASE_DIGEST_KEY] = _digest_tensor(self.lora_base.sha256)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, *args: Any, **kwargs: Any) -> Any:
        if self.lora_base is None:
            if BASE_DIGEST_KEY in state_dict:
                raise LoraBaseError(
                    f"this state dict holds only LoRA adapters and heads ({BASE_DIGEST_KEY} is set) but the model was "
                    "built without LoRA (model.lora_r=0): load it with its own config, or merge it first with "
                    "`python -m avhubert.merge_lora`")
            return super().load_state_dict(state_dict, strict, *args, **kwargs)  # type: ignore[misc]
        given = dict(state_dict)
        if BASE_DIGEST_KEY not in given:
            raise LoraBaseError(
                f"the model has LoRA adapters over the frozen base {self.lora_base.path} but this state dict holds no "
                f"{BASE_DIGEST_KEY}: it is not a LoRA checkpoint of this model (a full fine-tuned checkpoint loads "
                "into a model built with model.lora_r=0)")
        saved = _digest_hex(given.pop(BASE_DIGEST_KEY))
        if saved != self.lora_base.sha256:
            raise LoraBaseError(
                f"{self.lora_base.path} (model.w2v_path, the frozen base of these LoRA adapters) has changed: its "
                f"sha256 is {self.lora_base.sha256}, the adapters were trained on a file with sha256 {saved}; put the "
                "original pre-trained checkpoint back, or point model.w2v_path at a copy of it")
        frozen = set(frozen_parameter_names(self))  # type: ignore[arg-type]
        result = super().load_state_dict(given, False, *args, **kwargs)  # type: ignore[misc]
        missing = [k for k in result.missing_keys if k not in frozen]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"LoRA state dict does not fit the model: missing keys {missing[:_LIST_AT_MOST]}"
                f"{' ...' if len(missing) > _LIST_AT_MOST else ''}, unexpected keys {unexpected[:_LIST_AT_MOST]}"
                f"{' ...' if len(unexpected) > _LIST_AT_MOST else ''} (was it trained with other model.lora_* settings?)")
        return type(result)(missing, unexpected)


def require_base_file(path: str, what: str) -> None:
    """Raise `LoraBaseError` naming `path` when the base checkpoint of a LoRA model is not there."""
    if not os.path.isfile(path):
        raise LoraBaseError(
            f"{path} ({what}) not found: it holds the frozen base weights of this LoRA checkpoint, which stores only "
            "adapters and heads; restore the file there, pass its new location (training: model.w2v_path=...; "
            "load_model_ensemble_and_task(..., arg_overrides={'w2v_path': ...})), or decode a checkpoint merged "
            "with `python -m avhubert.merge_lora` (it needs no base)")

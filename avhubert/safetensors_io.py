"""Pickle-free model files: weights in safetensors, everything else in one JSON config.

A folder written by `save_safetensors` holds

- `model.safetensors`: the model's state dict (same keys as the checkpoint; tensors shared by
  several keys, e.g. tied decoder embeddings, are stored once);
- `config.json`: the fairseq `model` and `task` config sections (a fine-tuned model's
  `model.w2v_args` included, so the encoder is rebuilt without its pre-training checkpoint), the
  task's dictionaries as symbol lists, and the name of the tokenizer file;
- `sentencepiece.model` when the task has a sentencepiece tokenizer (its serialized proto).

`load_safetensors` rebuilds the task and the model from these with fairseq's registries and
never unpickles anything: no `torch.load`, no `pickle`. Files are written atomically
(`avdata.atomic`), `config.json` last, so a folder with a `config.json` is complete.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from avdata.atomic import atomic_path, write_text
from fairseq import tasks
from fairseq.data import Dictionary
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from .model import AVHubertModel

__all__ = ["FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "TOKENIZER_NAME", "save_safetensors",
           "load_safetensors", "load_safetensors_with_task", "read_config", "find_av_hubert", "dictionary_to_json",
           "dictionary_from_json"]

FORMAT = "avhubert-safetensors"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "sentencepiece.model"


def find_av_hubert(model: nn.Module) -> AVHubertModel:
    """The `AVHubertModel` inside a pre-training, seq2seq (`encoder.w2v_model`) or CTC
    (`w2v_encoder.w2v_model`) model."""
    if isinstance(model, AVHubertModel):
        return model
    for path in ("encoder.w2v_model", "w2v_encoder.w2v_model"):
        inner: Any = model
        for name in path.split("."):
            inner = getattr(inner, name, None)
        if isinstance(inner, AVHubertModel):
            return inner
    raise TypeError(f"{type(model).__name__} holds no AV-HuBERT encoder (expected av_hubert, av_hubert_seq2seq "
                    "or av_hubert_ctc)")


def dictionary_to_json(d: Dictionary) -> Dict[str, Any]:
    """A fairseq `Dictionary` as JSON-ready data (symbols in index order, counts, special words)."""
    return {"symbols": list(d.symbols), "count": [int(c) for c in d.count], "nspecial": d.nspecial,
            "bos": d.bos_word, "pad": d.pad_word, "eos": d.eos_word, "unk": d.unk_word}


def dictionary_from_json(data: Dict[str, Any]) -> Dictionary:
    """Inverse of `dictionary_to_json`: the same symbols at the same indices."""
    d = Dictionary(bos=data["bos"], pad=data["pad"], eos=data["eos"], unk=data["unk"])
    d.symbols, d.count, d.nspecial = list(data["symbols"]), list(data["count"]), int(data["nspecial"])
    d.indices = {s: i for i, s in enumerate(d.symbols)}  # a repeated symbol maps to its last index, as fairseq's overwrite
    d.bos_index, d.pad_index = d.indices[d.bos_word], d.indices[d.pad_word]
    d.eos_index, d.unk_index = d.indices[d.eos_word], d.indices[d.unk_word]
    return d


def _cluster_dictionaries(n_classes: List[int]) -> List[Dictionary]:
    """Dictionaries of cluster ids `0..K-1` (what `dict.km.txt` holds) for sizes that include the specials."""
    out = []
    for n in n_classes:
        d = Dictionary()
        for i in range(n - d.nspecial):
            d.add_symbol(str(i))
        out.append(d)
    return out


def _plain(cfg: Any) -> Dict[str, Any]:
    """`cfg` as JSON-ready data with `${...}` interpolations resolved against its root (as fairseq's
    checkpoints store it)."""
    try:
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    except Exception as e:  # noqa: BLE001 - omegaconf raises several types for one problem
        raise ValueError(f"save_safetensors: the config cannot be resolved to plain values: {e}") from None


def _task_state(task: Any, model: nn.Module) -> Tuple[Dict[str, Any], Optional[bytes]]:
    """Dictionaries (JSON) and the sentencepiece proto of `task`'s state; cluster dictionaries of a
    model saved without its task are ids 0..K-1 sized from the model."""
    state: Dict[str, Any] = {}
    proto = None
    held = {} if task is None else dict(task.state_dict())
    if task is not None and getattr(task.cfg, "fine_tuning", False):
        held.setdefault("target_dictionary", task.target_dictionary)  # built from the config when not restored
    dicts = held.get("dictionaries")
    if dicts is None:
        if task is not None and not getattr(task.cfg, "fine_tuning", False):
            dicts = task.dictionaries
        else:
            dicts = _cluster_dictionaries(find_av_hubert(model).num_classes)
    state["dictionaries"] = [dictionary_to_json(d) for d in dicts]
    if held.get("target_dictionary") is not None:
        state["target_dictionary"] = dictionary_to_json(held["target_dictionary"])
    elif not isinstance(model, AVHubertModel):
        raise ValueError(f"save_safetensors: a fine-tuned {type(model).__name__} needs task= (its target dictionary)")
    bpe = held.get("s2s_tokenizer")
    if bpe is None and task is not None and getattr(task, "has_tokenizer", False):
        bpe = task.s2s_tokenizer
    if bpe is not None:
        proto = bpe.sp.serialized_model_proto()
    return state, proto


def _drop_resnet_weights(model_cfg: Dict[str, Any]) -> None:
    """The ResNet weights file is only read at build time and the weights are in the safetensors."""
    model_cfg.pop("resnet_weights", None)
    w2v = model_cfg.get("w2v_args")
    if isinstance(w2v, dict) and isinstance(w2v.get("model"), dict):
        w2v["model"].pop("resnet_weights", None)


def save_safetensors(model: nn.Module, cfg: Any, out_dir: str | os.PathLike, task: Any = None) -> Path:
    """Write `model` as `out_dir/{model.safetensors, config.json[, sentencepiece.model]}`.

    `cfg`: the fairseq config (dict or DictConfig) with `model` and `task` sections, e.g. the
    `cfg` of `load_model_ensemble_and_task`. `task`: the fairseq task, for its dictionaries and
    tokenizer (required for fine-tuned models; a pre-training model without it gets cluster
    dictionaries `0..K-1` of its sizes). Returns the path of the `.safetensors` file.
    """
    plain = _plain(cfg)
    for key in ("model", "task"):
        if not isinstance(plain.get(key), dict) or "_name" not in plain[key]:
            raise ValueError(f"save_safetensors: cfg must hold a '{key}' section with its '_name'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, proto = _task_state(task, model)
    model_cfg, task_cfg = plain["model"], plain["task"]
    _drop_resnet_weights(model_cfg)
    first = next(model.parameters())
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_cfg, "task": task_cfg,
              "task_state": state, "weights": WEIGHTS_NAME, "dtype": str(first.dtype).replace("torch.", ""),
              "tokenizer": TOKENIZER_NAME if proto is not None else None}
    weights = out / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_model(model, str(tmp), metadata={"format": FORMAT, "model": model_cfg["_name"]})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates it private (0600); give it the usual mode
    if proto is not None:
        with atomic_path(out / TOKENIZER_NAME) as tmp:
            tmp.write_bytes(proto)
    write_text(out / CONFIG_NAME, json.dumps(config, indent=1) + "\n")
    return weights


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such safetensors file or folder")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} beside it (save_safetensors writes it last: incomplete "
                                "export or not an exported folder)")
    return folder


def read_config(path: str | os.PathLike) -> Dict[str, Any]:
    """The `config.json` of an exported folder (or of the folder of a `.safetensors` file), checked."""
    file = _folder(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{file}: not an AV-HuBERT safetensors config (format={config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {config['format_version']} is newer than this code reads "
                         f"({FORMAT_VERSION})")
    return config


def load_safetensors_with_task(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any], Any]:
    """`(model in eval mode, config dict, fairseq task)` from a folder written by `save_safetensors`.

    `path`: the folder or its `.safetensors` file. The task carries the dictionaries and the
    tokenizer (`task.target_dictionary`, `task.s2s_tokenizer`, `task.build_generator`).
    """
    folder = _folder(path)
    config = read_config(folder)
    weights = Path(path) if Path(path).is_file() else folder / config.get("weights", WEIGHTS_NAME)
    task_cfg = dict(config["task"])
    if config.get("tokenizer"):
        task_cfg["tokenizer_bpe_model"] = str((folder / config["tokenizer"]).resolve())
        task_cfg["tokenizer_bpe_name"] = "sentencepiece"
    config["task"] = task_cfg
    task = tasks.setup_task(OmegaConf.create(task_cfg), from_checkpoint=True)
    state = config.get("task_state", {})
    restored: Dict[str, Any] = {"dictionaries": [dictionary_from_json(d) for d in state.get("dictionaries", [])]}
    if state.get("target_dictionary") is not None:
        restored["target_dictionary"] = dictionary_from_json(state["target_dictionary"])
    task.load_state_dict(restored)
    model = task.build_model(OmegaConf.create(config["model"]), from_checkpoint=True)
    model.to(device=device, dtype=getattr(torch, config.get("dtype", "float32")))
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{weights}: unreadable safetensors file ({e})") from None
    except RuntimeError as e:
        raise ValueError(f"{weights}: does not fit the model of {folder / CONFIG_NAME}: {e}") from None
    return model.eval(), config, task


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """`(model in eval mode, config dict)` from a folder written by `save_safetensors` (or its
    `.safetensors` file); no pickle involved. See `load_safetensors_with_task` for the task."""
    model, config, _ = load_safetensors_with_task(path, device)
    return model, config

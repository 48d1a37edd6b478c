"""Original-format checkpoints load strictly and safely; the plugin registers idempotently."""

import os
import pickle
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import avhubert
from avhubert.checkpoint import UnsafeCheckpointError, load_checkpoint
from avhubert.model import AVHubertModel


class NotAllowed:
    pass


def test_pretrain_fixture_loads_strictly_without_original_paths(spec_fixtures, tmp_path):
    path = spec_fixtures / "avhubert_tiny_pretrain.pt"
    state = load_checkpoint(str(path))
    assert state["cfg"]["task"]["data"].startswith("/checkpoint/")
    assert not os.path.exists(state["cfg"]["task"]["data"])
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], strict=True)
    model = models[0]
    assert isinstance(model, AVHubertModel)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state["model"].items()}, strict=True)
    assert not missing and not unexpected
    assert len(task.dictionaries[0]) == model.label_embs_concat.shape[0]
    model.eval()
    with torch.no_grad():
        x, _ = model.extract_features({"audio": torch.randn(1, 104, 10), "video": torch.randn(1, 1, 10, 88, 88)})
    assert x.shape == (1, 10, model.cfg.encoder_embed_dim) and torch.isfinite(x).all()


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        load_checkpoint(str(path))
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_registered_names():
    assert "av_hubert_pretraining" in TASK_REGISTRY and "av_hubert" in MODEL_REGISTRY
    assert "av_hubert" in CRITERION_REGISTRY


def test_importing_twice_and_under_another_module_path(repo, tmp_path):
    link = tmp_path / "avhubert_copy"
    link.symlink_to(repo / "avhubert", target_is_directory=True)
    code = f"""
import sys, importlib, argparse
import avhubert
from fairseq import utils
utils.import_user_module(argparse.Namespace(user_dir={str(repo / 'avhubert')!r}))
utils.import_user_module(argparse.Namespace(user_dir={str(repo / 'avhubert')!r}))
sys.path.insert(0, {str(tmp_path)!r})
importlib.import_module("avhubert_copy")
from fairseq.tasks import TASK_REGISTRY
print("ok", TASK_REGISTRY["av_hubert_pretraining"].__module__)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok avhubert.task" in proc.stdout

"""`model.freeze_finetune_updates`: real `fairseq-hydra-train` fine-tuning runs (tiny pre-training,
then CTC or seq2seq fine-tuning with a checkpoint after every update). During the frozen updates
only the pre-trained encoder is frozen: the CTC projection / the seq2seq decoder train from the
first update; after them the encoder trains too."""

from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.finetune.test_finetune_decode import finetune, ft_data, pretrained  # noqa: F401 (fixtures)

FREEZE, UPDATES = 3, 5
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "_float_tensor")
# parameters of the encoder that receive no gradient while fine-tuning (pre-training leftovers)
UNUSED = ("mask_emb", "label_embs_concat")
HEADS = {"tiny_ctc": "w2v_encoder.proj.", "tiny_s2s": "decoder."}
ENCODER = {"tiny_ctc": "w2v_encoder.w2v_model.", "tiny_s2s": "encoder.w2v_model."}


def _params(path: Path, prefix: str) -> Dict[str, torch.Tensor]:
    """Trainable tensors under `prefix` (prefix stripped), buffers and unused leftovers excluded."""
    model = torch.load(path, map_location="cpu", weights_only=False)["model"]
    out = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix) and not k.endswith(BUFFERS)}
    return {k: v for k, v in out.items() if not k.endswith(UNUSED)}


def _changed(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> List[str]:
    assert a.keys() == b.keys() and a
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


@pytest.mark.parametrize("config", ["tiny_ctc", "tiny_s2s"])
def test_frozen_updates_train_the_head_but_not_the_encoder(config, bin_dir, repo, ft_data, pretrained, tmp_path):
    exp = tmp_path / config
    finetune(bin_dir, repo, ft_data, pretrained, exp, config, f"model.freeze_finetune_updates={FREEZE}",
             f"optimization.max_update={UPDATES}", "checkpoint.save_interval_updates=1",
             "checkpoint.keep_interval_updates=-1", "dataset.disable_validation=true")
    ckpts = {u: next((exp / "ckpt").glob(f"checkpoint_*_{u}.pt")) for u in (1, FREEZE, UPDATES)}
    head, enc = HEADS[config], ENCODER[config]
    pre = torch.load(pretrained, map_location="cpu", weights_only=False)["model"]
    pre = {k: v for k, v in pre.items() if not k.endswith(BUFFERS + UNUSED) and not k.startswith(("final_proj", "target_glu"))}

    # frozen updates 1..FREEZE: the encoder keeps the pre-trained weights, the head learns
    frozen = _params(ckpts[FREEZE], enc)
    assert frozen.keys() == pre.keys()
    assert _changed(pre, frozen) == []
    assert _changed(_params(ckpts[1], enc), frozen) == []
    head_1, head_frozen = _params(ckpts[1], head), _params(ckpts[FREEZE], head)
    assert _changed(head_1, head_frozen) == sorted(head_1)

    # afterwards both train (every encoder parameter that gets a gradient moves)
    assert _changed(frozen, _params(ckpts[UPDATES], enc)) == sorted(frozen)
    assert _changed(head_frozen, _params(ckpts[UPDATES], head)) == sorted(head_frozen)

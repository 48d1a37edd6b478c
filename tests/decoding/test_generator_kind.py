"""The model says which generator it needs (`generator_kind`); the task imports no model class.

Wrapped models (fairseq's `ModuleProxyWrapper` around DDP, what the trainer hands `valid_step`
under distributed training) forward the attribute, where an `isinstance` check on the model class
picked beam search for a wrapped CTC model.
"""

from argparse import Namespace

import pytest
from fairseq.data import Dictionary
from fairseq.dataclass.configs import GenerationConfig
from fairseq.distributed import ModuleProxyWrapper
from torch import nn

from avhubert.model_asr import AVHubertCtc, AVHubertSeq2Seq
from avhubert.sequence_generator import CTCGenerator, Seq2SeqGenerator
from avhubert.task import GENERATOR_KINDS, AVHubertPretrainingConfig, AVHubertPretrainingTask


def _task(tmp_path, **overrides) -> AVHubertPretrainingTask:
    d = Dictionary()
    for w in ("a", "b", "c"):
        d.add_symbol(w)
    d.save(str(tmp_path / "dict.wrd.txt"))
    cfg = AVHubertPretrainingConfig(data=str(tmp_path), label_dir=str(tmp_path), labels=["wrd"], fine_tuning=True,
                                    **overrides)
    return AVHubertPretrainingTask(cfg)


class _DDPLike(nn.Module):
    """Stands in for DistributedDataParallel: holds the model as `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _bare(cls):
    return cls.__new__(cls)  # only the class matters for the generator choice


def test_models_declare_their_generator():
    assert AVHubertCtc.generator_kind == "ctc" and AVHubertSeq2Seq.generator_kind == "seq2seq"
    assert set(GENERATOR_KINDS) == {"ctc", "seq2seq", "llm"}  # llm: av_hubert_llm (avhubert.model_llm)


def test_task_picks_the_generator_the_model_names(tmp_path):
    task = _task(tmp_path)
    assert isinstance(task.build_generator([_bare(AVHubertCtc)], Namespace(beam=1)), CTCGenerator)
    assert isinstance(task.build_generator([_bare(AVHubertSeq2Seq)], GenerationConfig()), Seq2SeqGenerator)


def test_wrapped_ctc_model_gets_ctc_decoding(tmp_path):
    task = _task(tmp_path)
    wrapped = ModuleProxyWrapper(_DDPLike(_bare(AVHubertCtc)))
    assert isinstance(task.build_generator([wrapped], Namespace(beam=1)), CTCGenerator)


def test_model_without_a_kind_gets_beam_search_and_a_bad_kind_is_named(tmp_path):
    task = _task(tmp_path)
    assert isinstance(task.build_generator([nn.Linear(1, 1)], GenerationConfig()), Seq2SeqGenerator)

    class Odd(nn.Module):
        generator_kind = "rnnt"

    with pytest.raises(ValueError, match=r"Odd.generator_kind must be one of .*'rnnt'"):
        task.build_generator([Odd()], GenerationConfig())


def test_has_tokenizer_from_config_or_restored_state(tmp_path):
    assert not _task(tmp_path).has_tokenizer  # fine-tuning, no sentencepiece named, nothing restored
    named = _task(tmp_path, tokenizer_bpe_model=str(tmp_path / "missing.model"))
    assert named.has_tokenizer  # answered without building it (the file does not exist)
    restored = _task(tmp_path)
    restored.state.merge_state_dict({"s2s_tokenizer": object()})  # what loading a checkpoint does
    assert restored.has_tokenizer

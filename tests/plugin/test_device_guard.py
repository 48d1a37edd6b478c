"""Device correctness without a GPU (issue 10): model, masking, criteria and decoding under
`tests/device_guard.DeviceGuard`, which simulates an accelerator on CPU and records ops that mix
accelerator and host tensors, and host syncs outside an explicit allow-list.

The allow-lists name each host sync the math needs; a new one fails the test.
"""

from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.data import Dictionary

from avhubert.beam_search import BeamSearchConfig
from avhubert.criterion import AVHubertCriterion
from avhubert.criterion_ctc_attention import Seq2SeqCtcCriterion
from avhubert.model_asr import (AVHubertCtc, AVHubertCtcConfig, AVHubertSeq2Seq, AVHubertSeq2SeqConfig, HubertEncoder,
                                HubertEncoderWrapper)
from avhubert.modules.decoder import build_decoder_from_cfg
from avhubert.modules.masking import mask_runs, substitute_video
from avhubert.sequence_generator import CTCGenerator, Seq2SeqGenerator
from tests.device_guard import ACCELERATOR, DeviceGuard, DeviceGuardError
from tests.plugin.tiny_model import random_batch, tiny_model

# Host syncs the math needs (everything else fails the tests):
PRETRAIN_SYNCS = [
    r"avhubert/model\.py:\d+ in mask_inputs",  # one copy of the padding mask: masks are sampled on the host
    r"avhubert/model\.py:\d+ in _sample_mask",  # the same for feature masking (from feature_mask)
    r"avhubert/model\.py:\d+ in (predict|<listcomp>)",  # x[mask], t[mask]: the masked-frame count sets the sizes
    r"avhubert/modules/transformer\.py:\d+ in forward",  # padding_mask.any(): mask-free attention kernel
]
FAIRSEQ_SYNCS = [r"site-packages/fairseq/"]  # fairseq's own criteria (accuracy counts, CTC targets)
DECODING_SYNCS = [r"avhubert/beam_search\.py", r"avhubert/modules/ctc\.py", r"avhubert/sequence_generator\.py"]
VOCAB = 12


def old_substitute_video(video: torch.Tensor, mask: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`same_seq` substitution as it was before issue 10 (negative example): host factories and
    host `lengths` indexed with indices on the mask's device."""
    bsz, tsz = mask.shape
    if lengths is None:
        lengths = torch.full((bsz,), tsz, dtype=torch.long)
    b, s, e = mask_runs(mask)
    span = e - s
    lo = (s - span).clamp(min=0)
    length = lengths[b]
    excluded = (e.clamp(max=length) - lo).clamp(min=0)
    n_valid = (length - excluded).clamp(min=1)
    u = (torch.rand(len(s), generator=generator) * n_valid).long()
    r = torch.where(u < lo, u, u + excluded)
    run_id = torch.repeat_interleave(torch.arange(len(s)), span)
    offset = torch.arange(int(span.sum())) - torch.repeat_interleave(span.cumsum(0) - span, span)
    tgt_t = s[run_id] + offset
    src_t = torch.minimum(r[run_id] + offset, (length[run_id] - 1).clamp(min=0)).clamp(max=tsz - 1)
    out = video.clone()
    bi = b[run_id]
    out[bi, :, tgt_t] = video[bi, :, src_t]
    return out


def video_and_mask(bsz: int = 3, tsz: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(bsz, 1, tsz, 4, 4, generator=g)
    mask = torch.rand(bsz, tsz, generator=g) < 0.4
    return video, mask, torch.tensor([tsz, tsz - 3, tsz - 7][:bsz])


# ----------------------------------------------------------------------------- the guard itself
def test_guard_flags_the_old_substitute_video_indexing():
    """Today's bug: the model passed host `lengths` while the mask lived on the accelerator."""
    video, mask, lengths = video_and_mask()
    guard = DeviceGuard()
    guard.place(video, mask)
    with guard:
        old_substitute_video(video, mask, lengths)
    bad = [str(e) for e in guard.violations]
    assert any("__getitem__" in e and "in old_substitute_video" in e for e in bad), bad  # lengths[b]
    with pytest.raises(DeviceGuardError, match="mixed-devices"):
        guard.check(allowed_syncs=[".*"])


def test_guard_semantics():
    x = torch.ones(4)
    guard = DeviceGuard()
    guard.place(x)
    with guard:
        assert x.device == ACCELERATOR and x.is_cuda
        ok = x + torch.zeros(4, device=x.device) + torch.tensor(2.0)  # explicit device; 0-dim host scalar
        moved = torch.arange(4).to(x.device) * x
        assert guard.on_accelerator(ok) and guard.on_accelerator(moved) and ok.device == ACCELERATOR
        host = x.cpu()
        assert not guard.on_accelerator(host) and host.device.type == "cpu"
        assert not guard.events[:-1] and guard.syncs[-1].op == "cpu"
        _ = x + torch.zeros(4)  # factory without device=
        float(x.sum())
    assert [e.kind for e in guard.events] == ["host-sync", "mixed-devices", "host-sync"]
    with pytest.raises(DeviceGuardError):
        guard.check(allowed_syncs=[".*"])


# ----------------------------------------------------------------------------- masking
def test_substitute_video_is_device_clean_and_equals_the_old_code_on_cpu():
    for seed in range(5):
        video, mask, lengths = video_and_mask(seed=seed)
        old = old_substitute_video(video, mask, lengths, torch.Generator().manual_seed(seed))
        new = substitute_video(video, mask, "same_seq", lengths, torch.Generator().manual_seed(seed))
        assert torch.equal(old, new)
    # pre-training: host mask and lengths, accelerator video -> no syncs at all
    guard = DeviceGuard()
    guard.place(video)
    with guard:
        out = substitute_video(video, mask, "same_seq", lengths)
        out2 = substitute_video(video, mask, "same_other_seq", lengths)
        out1 = substitute_video(video[:1], mask[:1], "same_seq", lengths[:1])
    assert all(guard.on_accelerator(t) for t in (out, out2, out1))
    guard.check()
    # injected accelerator mask with host lengths: device-correct (the syncs are the data-dependent sizes)
    guard = DeviceGuard()
    guard.place(video, mask)
    with guard:
        out = substitute_video(video, mask, "same_seq", lengths, torch.Generator().manual_seed(1))
    assert guard.on_accelerator(out) and not guard.violations


# ----------------------------------------------------------------------------- pre-training
def pretrain_sample(lengths=(20, 17, 12), seed: int = 0):
    audio, video, padding_mask = random_batch(3, 20, list(lengths), seed=seed)
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 8, (3, 20), generator=g)
    return {"id": torch.arange(3), "net_input": {"source": {"audio": audio, "video": video}, "padding_mask": padding_mask},
            "target_list": [target]}


@pytest.mark.parametrize("overrides", [
    dict(selection_type="same_seq"),
    dict(selection_type="same_other_seq", modality_dropout=1.0, audio_dropout=0.5),
    dict(masking_type="feature", mask_prob_audio=0.65, mask_length_audio=10, mask_channel_prob=0.2, mask_channel_length=4),
])
def test_pretraining_forward_backward_and_criterion_stay_on_the_accelerator(overrides):
    model = tiny_model(**overrides).train()
    sample = pretrain_sample()
    crit = AVHubertCriterion(SimpleNamespace(), 1.0, 1.0, loss_weights=[10.0])
    guard = DeviceGuard()
    guard.place(model, sample)
    with guard:
        loss, sample_size, log = crit(model, sample)
        loss.backward()
    guard.check(allowed_syncs=PRETRAIN_SYNCS)
    assert guard.on_accelerator(loss) and torch.isfinite(loss) and sample_size > 0
    for key, value in log.items():
        if key.startswith(("loss", "correct_")) and isinstance(value, torch.Tensor):
            assert guard.on_accelerator(value), key  # logged without a host sync
    with metrics.aggregate() as agg:
        crit.reduce_metrics([log, log])
    assert 0.0 <= agg.get_smoothed_value("correct_m_0") <= 1.0 and agg.get_smoothed_value("loss") > 0


def test_feature_extraction_for_clustering_stays_on_the_accelerator():
    model = tiny_model().eval()
    sample = pretrain_sample()
    guard = DeviceGuard()
    guard.place(model, sample)
    with guard, torch.no_grad():
        feats, pad = model.extract_features(sample["net_input"]["source"], sample["net_input"]["padding_mask"], output_layer=1)
    guard.check(allowed_syncs=PRETRAIN_SYNCS)
    assert guard.on_accelerator(feats) and guard.on_accelerator(pad)


# ----------------------------------------------------------------------------- fine-tuning
def target_dictionary() -> Dictionary:
    d = Dictionary()
    for i in range(VOCAB - len(d)):
        d.add_symbol(f"w{i}")
    return d


def asr_cfg(cls, **kw):
    return cls(w2v_path="unused", normalize=True, data="unused", **kw)


def seq2seq_model(ctc_weight: float = 0.0) -> AVHubertSeq2Seq:
    w2v = tiny_model()
    w2v.remove_pretraining_modules()
    cfg = asr_cfg(AVHubertSeq2SeqConfig, decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_layers=2,
                  decoder_attention_heads=4, decoder_normalize_before=True, share_decoder_input_output_embed=True,
                  ctc_weight=ctc_weight, finetune_modality_dropout=0.5)
    d = target_dictionary()
    decoder = build_decoder_from_cfg(cfg, len(d), d.pad(), encoder_embed_dim=w2v.cfg.encoder_embed_dim)
    return AVHubertSeq2Seq(HubertEncoderWrapper(w2v, cfg), decoder, cfg)


def ctc_model() -> AVHubertCtc:
    w2v = tiny_model()
    w2v.remove_pretraining_modules()
    cfg = asr_cfg(AVHubertCtcConfig, apply_mask=True, mask_prob=0.3, mask_length=3)
    return AVHubertCtc(cfg, HubertEncoder(w2v, cfg, VOCAB))


def finetune_sample(seed: int = 0):
    d = target_dictionary()
    audio, video, padding_mask = random_batch(3, 20, [20, 17, 12], seed=seed)
    g = torch.Generator().manual_seed(seed)
    lens = [5, 3, 4]
    target = torch.full((3, max(lens) + 1), d.pad())
    prev = torch.full((3, max(lens) + 1), d.pad())
    for i, n in enumerate(lens):
        toks = torch.randint(d.nspecial, len(d), (n,), generator=g)
        target[i, : n + 1] = torch.cat([toks, torch.tensor([d.eos()])])
        prev[i, : n + 1] = torch.cat([torch.tensor([d.eos()]), toks])
    net_input = {"source": {"audio": audio, "video": video}, "padding_mask": padding_mask, "prev_output_tokens": prev}
    return {"id": torch.arange(3), "net_input": net_input, "target": target, "ntokens": sum(lens) + 3}


def test_seq2seq_and_joint_ctc_fine_tuning_stay_on_the_accelerator():
    task = SimpleNamespace(target_dictionary=target_dictionary())
    for model, crit in (
        (seq2seq_model(), LabelSmoothedCrossEntropyCriterion(task, sentence_avg=True, label_smoothing=0.1, report_accuracy=True)),
        (seq2seq_model(0.3), Seq2SeqCtcCriterion(task, sentence_avg=True, label_smoothing=0.1)),
    ):
        model.train()
        sample = finetune_sample()
        guard = DeviceGuard()
        guard.place(model, sample)
        with guard:
            loss, _, log = crit(model, sample)
            loss.backward()
        guard.check(allowed_syncs=PRETRAIN_SYNCS + FAIRSEQ_SYNCS)
        assert guard.on_accelerator(loss) and torch.isfinite(loss)


def test_ctc_loss_on_padded_targets_equals_the_concatenated_form():
    task = SimpleNamespace(target_dictionary=target_dictionary())
    crit = Seq2SeqCtcCriterion(task, sentence_avg=True, label_smoothing=0.1)
    sample = finetune_sample()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 3, VOCAB, generator=g)
    pad = sample["net_input"]["padding_mask"]
    target = sample["target"]
    keep = (target != task.target_dictionary.pad()) & (target != task.target_dictionary.eos())
    lprobs = F.log_softmax(logits, dim=-1)
    want = F.ctc_loss(lprobs, target[keep], (~pad).sum(-1), keep.sum(-1), blank=0, reduction="sum", zero_infinity=True)
    assert torch.equal(crit.ctc_loss(logits, pad, sample), want)


def test_ctc_fine_tuning_stays_on_the_accelerator():
    task = SimpleNamespace(target_dictionary=target_dictionary())
    model = ctc_model().train()
    crit = CtcCriterion(CtcCriterionConfig(zero_infinity=True, sentence_avg=True, post_process="letter"), task)
    sample = finetune_sample()
    del sample["net_input"]["prev_output_tokens"]
    guard = DeviceGuard()
    guard.place(model, sample)
    with guard:
        loss, _, _ = crit(model, sample)
        loss.backward()
    guard.check(allowed_syncs=PRETRAIN_SYNCS + FAIRSEQ_SYNCS)
    assert guard.on_accelerator(loss) and torch.isfinite(loss)


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_beam_search_stays_on_the_accelerator(ctc_weight):
    model = seq2seq_model(ctc_weight).eval()
    sample = finetune_sample()
    gen = Seq2SeqGenerator(target_dictionary(), BeamSearchConfig(beam=3, max_len_a=0.5, max_len_b=2, ctc_weight=ctc_weight))
    guard = DeviceGuard()
    guard.place(model, sample)
    with guard:
        hyps = gen.generate([model], sample)
    guard.check(allowed_syncs=PRETRAIN_SYNCS + DECODING_SYNCS)
    assert len(hyps) == 3 and all(len(h) == 3 for h in hyps)
    assert not any(guard.on_accelerator(h["tokens"]) for utt in hyps for h in utt)  # results come back to the host


@pytest.mark.parametrize("beam", [1, 3])
def test_ctc_decoding_stays_on_the_accelerator(beam):
    model = ctc_model().eval()
    sample = finetune_sample()
    del sample["net_input"]["prev_output_tokens"]
    guard = DeviceGuard()
    guard.place(model, sample)
    with guard:
        hyps = CTCGenerator(target_dictionary(), beam=beam).generate([model], sample)
    guard.check(allowed_syncs=PRETRAIN_SYNCS + DECODING_SYNCS)
    assert len(hyps) == 3


# ----------------------------------------------------------------------------- clustering
def test_kmeans_on_the_accelerator_syncs_twice_per_lloyd_pass():
    """The pass's inertia and its empty clusters are the only host reads; not one per chunk."""
    import numpy as np

    from clustering.kmeans import fit_kmeans, lloyd, nearest_centroid

    x = np.random.default_rng(0).normal(size=(640, 8)).astype(np.float32)
    init = torch.from_numpy(x[:5].copy())
    want = lloyd(x, init, max_iter=4, tol=0.0, device="cpu", chunk_rows=64)
    guard = DeviceGuard()
    with guard:
        got = lloyd(x, init, max_iter=4, tol=0.0, device="cuda", chunk_rows=64)  # "cuda" = the simulated accelerator
    assert not guard.violations, guard.violations
    lloyd_syncs = [str(e) for e in guard.syncs if e.where.endswith("in lloyd")]
    assert len(lloyd_syncs) == 2 * got.n_iter_ + 1, lloyd_syncs  # + the returned centres
    assert np.array_equal(got.cluster_centers_, want.cluster_centers_) and got.history == want.history
    guard = DeviceGuard()
    with guard:
        model = fit_kmeans(x, 5, n_init=2, max_iter=3, device="cuda", chunk_rows=64)
        labels = nearest_centroid(x, model.cluster_centers_, device="cuda", chunk_rows=64)
    assert not guard.violations, guard.violations
    assert labels.shape == (640,) and set(labels.tolist()) <= set(range(5))

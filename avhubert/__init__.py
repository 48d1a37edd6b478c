"""AV-HuBERT as a fairseq user-dir plugin: `common.user_dir=<repo>/avhubert`.

Importing registers (idempotently: importing twice, or under another module path, does not raise):

=====================  =========  ==================================  =============================================
name                   kind       class                               file
=====================  =========  ==================================  =============================================
av_hubert_pretraining  task       AVHubertPretrainingTask             task.py (pre-training and fine-tuning)
av_hubert              model      AVHubertModel                       model.py (pre-training)
av_hubert_seq2seq      model      AVHubertSeq2Seq                     model_asr.py (encoder-decoder fine-tuning)
av_hubert_ctc          model      AVHubertCtc                         model_asr.py (CTC fine-tuning)
av_hubert              criterion  AVHubertCriterion                   criterion.py (masked cluster prediction)
av_hubert_seq2seq_ctc  criterion  Seq2SeqCtcCriterion                 criterion_ctc_attention.py (joint CTC + attention)
=====================  =========  ==================================  =============================================

It also admits the fairseq classes pickled in original checkpoints to torch's weights-only loader
(`checkpoint.py`) and makes fairseq's checkpoint files crash-safe with one-line load errors
(`checkpoint_io.py`). Fine-tuning also uses fairseq's own criteria `label_smoothed_cross_entropy` (seq2seq)
and `ctc`.
"""

from . import checkpoint, checkpoint_io, criterion, criterion_ctc_attention, model, model_asr, task  # noqa: F401  (registration imports)

checkpoint.register_safe_globals()
checkpoint_io.install_fairseq_hooks()

__all__ = ["checkpoint", "checkpoint_io", "criterion", "criterion_ctc_attention", "model", "model_asr", "task"]

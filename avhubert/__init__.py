"""AV-HuBERT as a fairseq user-dir plugin: `common.user_dir=<repo>/avhubert`.

Importing registers task `av_hubert_pretraining`, models `av_hubert`, `av_hubert_seq2seq`,
`av_hubert_ctc` and criteria `av_hubert`, `av_hubert_seq2seq_ctc`
(idempotently: importing twice, or under another module path, does not raise), admits the
fairseq classes pickled in original checkpoints to torch's weights-only loader, and makes
fairseq's checkpoint files crash-safe with one-line load errors (`avhubert.checkpoint_io`).
"""

from . import checkpoint, checkpoint_io, criterion, criterion_s2s, model, model_asr, task  # noqa: F401  (registration imports)

checkpoint.register_safe_globals()
checkpoint_io.install_fairseq_hooks()

__all__ = ["checkpoint", "checkpoint_io", "criterion", "criterion_s2s", "model", "model_asr", "task"]

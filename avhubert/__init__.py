"""AV-HuBERT as a fairseq user-dir plugin: `common.user_dir=<repo>/avhubert`.

Importing registers (idempotently: importing twice, or under another module path, does not raise):

=====================  =========  ==================================  =============================================
name                   kind       class                               file
=====================  =========  ==================================  =============================================
av_hubert_pretraining  task       AVHubertPretrainingTask             task.py (pre-training and fine-tuning)
av_hubert              model      AVHubertModel                       model.py (pre-training)
av_hubert_seq2seq      model      AVHubertSeq2Seq                     model_asr.py (encoder-decoder fine-tuning)
av_hubert_ctc          model      AVHubertCtc                         model_asr.py (CTC fine-tuning)
av_hubert_llm          model      AVHubertLlm                         model_llm.py (encoder + projector + causal LM)
av_hubert_classifier   model      AVHubertClassifier                  model_classifier.py (utterance classification)
av_hubert              criterion  AVHubertCriterion                   criterion.py (masked cluster prediction)
av_hubert_seq2seq_ctc  criterion  Seq2SeqCtcCriterion                 criterion_ctc_attention.py (joint CTC + attention)
av_hubert_llm          criterion  LlmCriterion                        criterion_llm.py (LM cross-entropy on transcripts)
av_hubert_classification criterion ClassificationCriterion           criterion_classification.py (classes, top-k)
=====================  =========  ==================================  =============================================

It also admits the fairseq classes pickled in original checkpoints to torch's weights-only loader
(`checkpoint.py`) and makes fairseq's checkpoint files crash-safe with one-line load errors
(`checkpoint_io.py`). Fine-tuning also uses fairseq's own criteria `label_smoothed_cross_entropy` (seq2seq)
and `ctc`.

`avhubert.load(path, device=...)` (`api.py`) loads any of these checkpoints for use without fairseq
knowledge: `extract_features(video=, audio=, layer=)` and `transcribe(...)`; the command line is
`python -m avhubert.transcribe`.
"""

from avdata.fast_malloc import use_tcmalloc_in_trainer

from . import checkpoint, checkpoint_io, criterion, criterion_ctc_attention, model, model_asr, run_records, task  # noqa: F401  (registration imports)
from . import criterion_classification, model_classifier  # noqa: F401  (registration imports)

from .api import load  # noqa: E402  (the loading API: avhubert.load(path) -> model with features / transcribe)

from . import criterion_llm, model_llm  # noqa: F401,E402  (registration imports: the LLM decoder)

checkpoint.register_safe_globals()
checkpoint_io.install_fairseq_hooks()
run_records.install_run_record_hooks()
use_tcmalloc_in_trainer()  # fairseq-hydra-train / fairseq-train re-execute themselves with tcmalloc (avdata/fast_malloc.py)

__all__ = ["load", "checkpoint", "checkpoint_io", "criterion", "criterion_ctc_attention", "model", "model_asr", "task",
           "criterion_classification", "model_classifier"]

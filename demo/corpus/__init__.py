"""Built-in audio-visual demo corpus: espeak-ng speech and rendered mouth videos.

`generate_corpus(out_dir, CorpusConfig(...))` writes the project's standard layout (manifests,
`.wrd` transcripts, sentencepiece model and `dict.wrd.txt`, babble noise lists); the CLI is
`python -m demo.make_corpus`. Modules: `vocabulary` (words, transcripts), `tts`
(libespeak-ng with phoneme timings), `speakers` (voices and faces), `visemes` (phonemes ->
mouth shapes), `render` (mouth video), `speech` (audio post-processing), `corpus` (driver).
"""

from .corpus import (
    GENERATOR_VERSION,
    SAMPLES_PER_FRAME,
    SPLITS,
    CorpusConfig,
    CorpusPaths,
    generate_corpus,
    make_babble,
    make_utterance,
    plan_noise,
    plan_utterances,
)
from .vocabulary import VOCABULARY

__all__ = [
    "GENERATOR_VERSION",
    "SAMPLES_PER_FRAME",
    "SPLITS",
    "VOCABULARY",
    "CorpusConfig",
    "CorpusPaths",
    "generate_corpus",
    "make_babble",
    "make_utterance",
    "plan_noise",
    "plan_utterances",
]

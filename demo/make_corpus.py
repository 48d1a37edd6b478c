"""Generate the built-in audio-visual demo corpus (espeak-ng speech + rendered mouth videos).

Reads nothing; writes under --out-dir: `audio/*.wav` (16 kHz mono int16), `video/*.mp4`
(25 fps 96x96 gray), `{train,valid,test}.tsv` manifests (root = out-dir, relative paths),
`{split}.wrd`, `spm{V}/spm_unigram{V}.model` + `dict.wrd.txt`, babble noise
`noise/{split}.tsv` (absolute wav paths), `demo_corpus.json` (config and speakers) and a
`.demo_corpus.done` marker. Seeded and deterministic; a rerun reuses finished files.
Needs the Debian package espeak-ng (libespeak-ng via ctypes) and OpenCV.

Example:
    python -m demo.make_corpus --out-dir demo_out/data --seed 0 --num-workers 2
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from demo.corpus import CorpusConfig, generate_corpus
from avdata.procs import setup_logging
from preparation.common import set_verbosity

logger = logging.getLogger(__name__)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's layout and shows every default."""


def build_parser() -> argparse.ArgumentParser:
    d = CorpusConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--out-dir", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--num-train", type=int, default=d.num_train, help="train utterances")
    p.add_argument("--num-unlabelled", type=int, default=d.num_unlabelled,
                   help="more training-speaker utterances for pre-training only (pretrain/train.tsv, no transcripts)")
    p.add_argument("--num-valid", type=int, default=d.num_valid, help="valid utterances")
    p.add_argument("--num-test", type=int, default=d.num_test, help="test utterances")
    p.add_argument("--train-speakers", type=int, default=d.train_speakers, help="train speakers")
    p.add_argument("--valid-speakers", type=int, default=d.valid_speakers, help="valid speakers")
    p.add_argument("--test-speakers", type=int, default=d.test_speakers, help="test speakers (unseen in train)")
    p.add_argument("--babble-speakers", type=int, default=d.babble_speakers,
                   help="voices that speak only in the babble noise")
    p.add_argument("--min-words", type=int, default=d.min_words, help="fewest words per utterance")
    p.add_argument("--max-words", type=int, default=d.max_words, help="most words per utterance")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="sentencepiece vocabulary size (upper bound)")
    p.add_argument("--num-noise-train", type=int, default=d.num_noise_train, help="train babble files")
    p.add_argument("--num-noise-valid", type=int, default=d.num_noise_valid, help="valid babble files")
    p.add_argument("--num-noise-test", type=int, default=d.num_noise_test, help="test babble files")
    p.add_argument("--noise-sec", type=float, default=d.noise_sec, help="babble file length in seconds")
    p.add_argument("--babble-talkers", type=int, default=d.babble_talkers, help="talkers mixed in each babble file")
    p.add_argument("--num-workers", type=int, default=2, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="regenerate every file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    set_verbosity(args.verbose)
    cfg = CorpusConfig(
        seed=args.seed,
        num_train=args.num_train,
        num_unlabelled=args.num_unlabelled,
        num_valid=args.num_valid,
        num_test=args.num_test,
        train_speakers=args.train_speakers,
        valid_speakers=args.valid_speakers,
        test_speakers=args.test_speakers,
        babble_speakers=args.babble_speakers,
        min_words=args.min_words,
        max_words=args.max_words,
        vocab_size=args.vocab_size,
        num_noise_train=args.num_noise_train,
        num_noise_valid=args.num_noise_valid,
        num_noise_test=args.num_noise_test,
        noise_sec=args.noise_sec,
        babble_talkers=args.babble_talkers,
    )
    paths = generate_corpus(args.out_dir, cfg, num_workers=args.num_workers, overwrite=args.overwrite,
                            progress=not args.no_progress)
    logger.info("demo corpus ready in %s", paths.out_dir)
    return 0


if __name__ == "__main__":
    setup_logging()
    raise SystemExit(main())

"""The reference's script name for `preparation.face.detect_landmarks` (same flags; the reference
spellings `--root --landmark --manifest --cnn_detector --face_predictor` are accepted).

    python -m preparation.detect_landmark --root $LRS3 --landmark $LRS3/landmark \
        --manifest $LRS3/file.list --cnn_detector F --face_predictor F --rank 0 --nshard 1
"""

from avdata.procs import run_main
from preparation.face.detect_landmarks import main

__all__ = ["main"]

if __name__ == "__main__":
    run_main(main)

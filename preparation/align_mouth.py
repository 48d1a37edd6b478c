"""The reference's script name for `preparation.face.crop_mouth_rois` (same flags; the reference
spellings `--video-direc --landmark-direc --filename-path --save-direc --mean-face` are accepted).

    python -m preparation.align_mouth --video-direc $LRS3 --landmark-direc $LRS3/landmark \
        --filename-path $LRS3/file.list --save-direc $LRS3/video --mean-face 20words_mean_face.npy
"""

from avdata.procs import run_main
from preparation.face.crop_mouth_rois import main

__all__ = ["main"]

if __name__ == "__main__":
    run_main(main)

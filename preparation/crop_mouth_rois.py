"""Deprecated alias (kept one release): `python -m preparation.crop_mouth_rois` runs `python -m preparation.face.crop_mouth_rois`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.crop_mouth_rois", "preparation.face.crop_mouth_rois")

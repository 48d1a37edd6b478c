"""Deprecated alias (kept one release): `python -m preparation.detect_landmarks` runs `python -m preparation.face.detect_landmarks`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.detect_landmarks", "preparation.face.detect_landmarks")

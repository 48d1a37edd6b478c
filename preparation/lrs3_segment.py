"""Deprecated alias (kept one release): `python -m preparation.lrs3_segment` runs `python -m preparation.lrs3.segment`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.lrs3_segment", "preparation.lrs3.segment")

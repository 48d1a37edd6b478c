"""Deprecated alias (kept one release): `python -m preparation.lrs3_trim` runs `python -m preparation.lrs3.trim`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.lrs3_trim", "preparation.lrs3.trim")

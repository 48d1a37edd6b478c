"""Deprecated alias (kept one release): `python -m preparation.lrs3_noise` runs `python -m preparation.noise.lrs3`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.lrs3_noise", "preparation.noise.lrs3")

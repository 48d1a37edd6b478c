"""Deprecated alias (kept one release): `python -m preparation.mix_babble` runs `python -m preparation.noise.mix_babble`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.mix_babble", "preparation.noise.mix_babble")

"""Deprecated alias (kept one release): `python -m preparation.musan_prepare` runs `python -m preparation.noise.musan`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.musan_prepare", "preparation.noise.musan")

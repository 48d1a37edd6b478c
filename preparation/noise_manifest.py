"""Deprecated alias (kept one release): `python -m preparation.noise_manifest` runs `python -m preparation.noise.manifest`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.noise_manifest", "preparation.noise.manifest")

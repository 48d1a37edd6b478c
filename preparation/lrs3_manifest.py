"""Deprecated alias (kept one release): `python -m preparation.lrs3_manifest` runs `python -m preparation.lrs3.manifest`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.lrs3_manifest", "preparation.lrs3.manifest")

"""Deprecated alias (kept one release): `python -m preparation.vox_manifest` runs `python -m preparation.vox2.manifest`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.vox_manifest", "preparation.vox2.manifest")

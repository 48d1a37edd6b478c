"""Deprecated alias (kept one release): `python -m preparation.vox_lists` runs `python -m preparation.vox2.lists`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.vox_lists", "preparation.vox2.lists")

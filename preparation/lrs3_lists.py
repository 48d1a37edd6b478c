"""Deprecated alias (kept one release): `python -m preparation.lrs3_lists` runs `python -m preparation.lrs3.lists`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.lrs3_lists", "preparation.lrs3.lists")

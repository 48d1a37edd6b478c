"""Deprecated alias (kept one release): `python -m preparation.prepare_own_videos` runs `python -m preparation.own_videos.prepare`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.prepare_own_videos", "preparation.own_videos.prepare")

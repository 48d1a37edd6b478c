"""Deprecated alias (kept one release): `python -m preparation.qa_report` runs `python -m preparation.own_videos.qa_report`."""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.qa_report", "preparation.own_videos.qa_report")

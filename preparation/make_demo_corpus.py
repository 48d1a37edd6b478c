"""Deprecated alias (kept one release): `python -m preparation.make_demo_corpus` runs `python -m demo.make_corpus`.

`preparation` must not import `demo` (the layer above it): the new module runs only under `__main__`.
"""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.make_demo_corpus", "demo.make_corpus")

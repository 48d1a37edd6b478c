"""Deprecated alias (kept one release): `python -m preparation.make_synthetic_data` runs `python -m demo.synthetic_data`.

`preparation` must not import `demo` (the layer above it): the new module runs only under `__main__`.
"""

if __name__ == "__main__":
    from preparation.cli import run_alias

    run_alias("preparation.make_synthetic_data", "demo.synthetic_data")

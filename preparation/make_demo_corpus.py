"""Deprecated alias: `python -m preparation.make_demo_corpus` -> `python -m demo.make_corpus`.

Kept for one release. `preparation` must not import `demo` (the layer above it), so the new module
is run lazily under `__main__` only; importing this module imports nothing from `demo`.
"""

if __name__ == "__main__":
    import runpy
    import sys

    print("warning: `python -m preparation.make_demo_corpus` is deprecated and will be removed; "
          "use `python -m demo.make_corpus`", file=sys.stderr)
    runpy.run_module("demo.make_corpus", run_name="__main__", alter_sys=True)

"""Deprecated alias: `python -m avhubert.demo` -> `python -m demo.run` (kept for one release).

The demo moved out of the fairseq plugin (`avhubert/` must not import the demo). The new module
is run lazily under `__main__` only, so importing this module imports nothing from `demo`.
"""

if __name__ == "__main__":
    import runpy
    import sys

    print("warning: `python -m avhubert.demo` is deprecated and will be removed; use `python -m demo.run`",
          file=sys.stderr)
    runpy.run_module("demo.run", run_name="__main__", alter_sys=True)

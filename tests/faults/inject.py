"""Run a Python module and SIGKILL it at a chosen file event (fault injection for tests/faults).

    python tests/faults/inject.py EVENT GLOB N -m package.module [args...]
    python tests/faults/inject.py EVENT GLOB N path/to/script.py [args...]

EVENT `before-replace` / `after-replace`: the process kills itself (SIGKILL: no clean-up, no
atexit, no flush) just before / just after the N-th `os.replace` whose destination's basename
matches GLOB. Every output of this project appears through `os.replace` of a temporary file, so
these are the moments between the writes of a multi-file output. Processes started with the
`spawn` method do not inherit the hook: use one worker.
"""

import fnmatch
import os
import runpy
import signal
import sys


def main() -> None:
    event, pattern, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if event not in ("before-replace", "after-replace") or len(sys.argv) < 5:
        raise SystemExit(__doc__)
    if sys.argv[4] == "-m":
        module, script = sys.argv[5], None
        sys.argv = [module] + sys.argv[6:]
    else:
        module, script = None, sys.argv[4]
        sys.argv = sys.argv[4:]
    real_replace = os.replace
    seen = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal seen
        hit = fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern)
        seen += hit
        if hit and seen == nth and event == "before-replace":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)
        if hit and seen == nth and event == "after-replace":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    if module is not None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

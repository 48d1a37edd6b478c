"""Moved to `avdata.face.mouth_roi` (shared with `avhubert.transcribe`); this name is the same module."""

import sys

import avdata.face.mouth_roi as _impl

sys.modules[__name__] = _impl

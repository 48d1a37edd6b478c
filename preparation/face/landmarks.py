"""Moved to `avdata.face.landmarks` (shared with `avhubert.transcribe`); this name is the same module."""

import sys

import avdata.face.landmarks as _impl

sys.modules[__name__] = _impl

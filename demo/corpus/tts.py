"""Text-to-speech with phoneme timings from libespeak-ng (Debian `espeak-ng`) through ctypes.

libespeak-ng in synchronous mode hands the synthesised samples to a callback together with
phoneme events whose `sample` field is the offset of the phoneme's start in the output (at the
engine's native 22,050 Hz). Two facts shape this module:

- The engine keeps state between utterances (pitch flutter phase, noise generator), so two
  syntheses of the same text in one process differ slightly. For seeded, order-independent
  output every utterance is synthesised in a forked child of a process whose engine is freshly
  initialised and has synthesised nothing; the child seeds the C `rand()` the engine uses,
  synthesises once, sends the result through a pipe and exits.
- Re-initialising the engine in one process hangs, so the fork is the only clean reset.

Only Linux (fork) is supported, like the rest of the preparation pipeline.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ESPEAK_LIBRARY",
    "EspeakError",
    "Phone",
    "VoiceSettings",
    "Synthesis",
    "EspeakSynthesizer",
]

ESPEAK_LIBRARY = "libespeak-ng.so.1"
INSTALL_HINT = "install the Debian package espeak-ng (`apt-get install -y espeak-ng`)"

# espeak_AUDIO_OUTPUT / options / parameters / event types (speak_lib.h, espeak-ng 1.51)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 3, 4, 7
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_EE_OK = 0
_CHILD_EXIT_VOICE_ERROR = 3


class EspeakError(RuntimeError):
    """libespeak-ng is missing, a voice is unknown, or a synthesis failed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """`espeak_EVENT` (40 bytes on x86-64 / aarch64)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phone:
    """One phoneme (espeak ASCII mnemonic, e.g. `oU`, `T`, `_:` for a pause) and its span."""

    name: str
    start_sec: float
    end_sec: float


@dataclass(frozen=True)
class VoiceSettings:
    """An espeak-ng voice (`language+variant`, e.g. `en-us+m3`) and prosody parameters.

    `rate_wpm` words per minute (80-450), `pitch` and `pitch_range` 0-100, `word_gap_10ms`
    extra pause between words in units of 10 ms.
    """

    voice: str
    rate_wpm: int = 170
    pitch: int = 50
    pitch_range: int = 50
    word_gap_10ms: int = 0


@dataclass(frozen=True)
class Synthesis:
    """Samples `[N]` int16 at `sample_rate_hz` and the phones in time order."""

    samples: np.ndarray
    sample_rate_hz: int
    phones: Tuple[Phone, ...]

    @property
    def duration_sec(self) -> float:
        return len(self.samples) / self.sample_rate_hz


class _Engine:
    """The process's one initialised libespeak-ng: the engine and its synthesis callback are
    process-wide, so every `EspeakSynthesizer` shares this (a second `espeak_Initialize` would
    replace the callback, and the first synthesizer's children would call a freed one)."""

    def __init__(self, library: str) -> None:
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            raise EspeakError(f"cannot load {library} ({exc}); {INSTALL_HINT}") from None
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}); is espeak-ng-data installed? {INSTALL_HINT}")
        self.chunks: List[np.ndarray] = []
        self.events: List[Tuple[str, int]] = []
        self.callback = _SynthCallback(self._on_audio)  # referenced for the life of the process
        lib.espeak_SetSynthCallback(self.callback)
        self.libc = ctypes.CDLL(None)
        self.lib = lib
        self.library = library
        self.sample_rate_hz = int(rate)

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self.events.append((events[i].id.string.decode("ascii", "replace"), int(events[i].sample)))
            i += 1
        return 0


_ENGINE: Optional[_Engine] = None


def _engine(library: str) -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine(library)
    elif _ENGINE.library != library:
        raise EspeakError(f"libespeak-ng is already loaded from {_ENGINE.library} in this process; cannot also use {library}")
    return _ENGINE


class EspeakSynthesizer:
    """Seeded espeak-ng synthesis, one forked child per utterance (see module docstring).

    The library is loaded and initialised on the first `synthesize` call, once per process
    (shared by all instances); that process must not synthesise itself (it never does here).
    """

    def __init__(self, library: str = ESPEAK_LIBRARY) -> None:
        self.library = library
        self._engine: Optional[_Engine] = None
        self.sample_rate_hz = 0

    # -- set-up (parent) ------------------------------------------------------------------
    def _ensure_initialized(self) -> _Engine:
        if self._engine is None:
            self._engine = _engine(self.library)
            self.sample_rate_hz = self._engine.sample_rate_hz
        return self._engine

    def version(self) -> str:
        """The libespeak-ng version (e.g. `1.51`); output differs between versions."""
        lib = self._ensure_initialized().lib
        lib.espeak_Info.restype = ctypes.c_char_p
        return lib.espeak_Info(None).decode("ascii", "replace")

    # -- synthesis ------------------------------------------------------------------------
    def synthesize(self, text: str, voice: VoiceSettings, noise_seed: int = 0) -> Synthesis:
        """Synthesise `text`; identical arguments give identical samples and phones."""
        self._ensure_initialized()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise once from the pristine engine state, then exit
            os.close(read_fd)
            code = 1
            try:
                payload = self._synthesize_here(text, voice, noise_seed)
                code = 0
            except _VoiceError as exc:
                payload, code = str(exc), _CHILD_EXIT_VOICE_ERROR
            except BaseException as exc:  # noqa: BLE001 - reported to the parent below
                payload = f"{type(exc).__name__}: {exc}"
            try:
                with os.fdopen(write_fd, "wb") as f:
                    f.write(pickle.dumps(payload))
            except BaseException:  # noqa: BLE001 - the parent sees the exit code
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            message = pickle.loads(data) if data else f"child exited with status {code}"
            if code == _CHILD_EXIT_VOICE_ERROR:
                raise EspeakError(f"espeak-ng voice {voice.voice!r} is not available: {message}")
            raise EspeakError(f"espeak-ng failed on {text!r} with {voice}: {message}")
        if not data:
            raise EspeakError(f"espeak-ng child returned no data for {text!r}")
        samples, events = pickle.loads(data)
        return self._to_synthesis(samples, events, text)

    def _synthesize_here(self, text: str, voice: VoiceSettings, noise_seed: int):
        engine = self._ensure_initialized()
        lib = engine.lib
        if lib.espeak_SetVoiceByName(voice.voice.encode("utf-8")) != _EE_OK:
            raise _VoiceError("espeak_SetVoiceByName failed")
        for param, value in (
            (_PARAM_RATE, voice.rate_wpm),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap_10ms),
        ):
            lib.espeak_SetParameter(param, int(value), 0)
        engine.libc.srand(ctypes.c_uint(noise_seed & 0xFFFFFFFF))
        buf = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth returned {err}")
        lib.espeak_Synchronize()
        samples = np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, np.int16)
        return samples.astype(np.int16), list(engine.events)

    def _to_synthesis(self, samples: np.ndarray, events: List[Tuple[str, int]], text: str) -> Synthesis:
        if samples.size == 0 or not events:
            raise EspeakError(f"espeak-ng produced no audio or no phoneme events for {text!r}")
        rate = self.sample_rate_hz
        starts = [min(max(s, 0), len(samples)) for _, s in events]
        ends = starts[1:] + [len(samples)]
        phones = tuple(
            Phone(name, s / rate, max(e, s) / rate) for (name, _), s, e in zip(events, starts, ends)
        )
        return Synthesis(samples=samples, sample_rate_hz=rate, phones=phones)


class _VoiceError(RuntimeError):
    pass

"""Synthetic speakers: an espeak-ng voice plus a face (mouth geometry, skin, light, camera).

Every held-out speaker (valid / test / babble) gets a voice variant (voice quality) of its own;
training speakers share the other variants, each with its own accent, prosody and face, so test
speakers are unseen in training in both voice and face. Parameters are drawn from seeded
generators, one per speaker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .tts import VoiceSettings

__all__ = ["BASE_VOICES", "VOICE_VARIANTS", "VoiceProfile", "FaceProfile", "Speaker", "make_speakers"]

# English espeak-ng voices (accents) and voice-quality variants that sound like plain speech
# (no whisper, robot or croak variants; not "travis", whose first formant sits at half its frequency).
BASE_VOICES: Tuple[str, ...] = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
VOICE_VARIANTS: Tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "adam", "benjamin", "david", "ed", "linda", "max", "paul", "rob", "robert", "steph",
    "Andy", "Annie", "belinda", "quincy",
)
_SPEAKER_STREAM = 101  # seed-sequence stream ids keep the speaker draws apart from the utterances'


@dataclass(frozen=True)
class VoiceProfile:
    """How a speaker sounds: espeak voice, base prosody and recording level."""

    base: str
    variant: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    loudness_dbfs: float  # peak level of the speech
    noise_floor_dbfs: float  # RMS of the microphone noise

    @property
    def voice(self) -> str:
        return f"{self.base}+{self.variant}"

    def settings(self, rng: np.random.Generator) -> VoiceSettings:
        """Per-utterance prosody: the speaker's base values plus a small jitter."""
        return VoiceSettings(
            voice=self.voice,
            rate_wpm=int(np.clip(self.rate_wpm + rng.integers(-12, 13), 100, 260)),
            pitch=int(np.clip(self.pitch + rng.integers(-6, 7), 0, 100)),
            pitch_range=int(np.clip(self.pitch_range + rng.integers(-8, 9), 0, 100)),
            word_gap_10ms=int(rng.integers(0, 4)),
        )


@dataclass(frozen=True)
class FaceProfile:
    """How a speaker's mouth region looks (lengths in pixels of the 96x96 frame, levels in 0-1)."""

    center_x: float
    center_y: float
    roll_deg: float
    scale: float
    mouth_half_width: float
    max_open_half_height: float
    upper_lip: float
    lower_lip: float
    teeth_height: float
    openness: float  # how far this speaker opens the mouth (articulation effort)
    smoothing_sec: float  # coarticulation: std of the Gaussian smoothing of the viseme targets
    skin_tone: float
    lip_ratio: float  # lip brightness relative to the skin
    cavity_level: float
    teeth_level: float
    tongue_level: float
    light_gradient: float
    light_angle_deg: float
    texture_amplitude: float
    texture_scale_px: float
    blur_px: float
    sensor_noise: float  # std of the per-pixel noise
    head_motion_px: float
    nostril_depth: float
    chin_shadow: float
    texture_seed: int


@dataclass(frozen=True)
class Speaker:
    id: str
    partition: str  # train, valid, test or babble
    voice: VoiceProfile
    face: FaceProfile

    def to_dict(self) -> Dict:
        return {"id": self.id, "partition": self.partition, "voice": asdict(self.voice), "face": asdict(self.face)}


def _draw_voice(rng: np.random.Generator, base: str, variant: str) -> VoiceProfile:
    return VoiceProfile(
        base=base,
        variant=variant,
        rate_wpm=int(rng.integers(135, 196)),
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(25, 86)),
        loudness_dbfs=float(rng.uniform(-12.0, -3.0)),
        noise_floor_dbfs=float(rng.uniform(-62.0, -46.0)),
    )


def _draw_face(rng: np.random.Generator) -> FaceProfile:
    u = rng.uniform
    return FaceProfile(
        center_x=float(u(44.0, 52.0)),
        center_y=float(u(46.0, 54.0)),
        roll_deg=float(u(-10.0, 10.0)),
        scale=float(u(0.85, 1.15)),
        mouth_half_width=float(u(20.0, 27.0)),
        max_open_half_height=float(u(9.0, 14.0)),
        upper_lip=float(u(4.0, 6.5)),
        lower_lip=float(u(5.0, 8.5)),
        teeth_height=float(u(2.0, 3.5)),
        openness=float(u(0.6, 1.05)),
        smoothing_sec=float(u(0.015, 0.035)),
        skin_tone=float(u(0.35, 0.8)),
        lip_ratio=float(u(0.5, 0.72)),
        cavity_level=float(u(0.05, 0.18)),
        teeth_level=float(u(0.7, 0.95)),
        tongue_level=float(u(0.3, 0.5)),
        light_gradient=float(u(0.0, 0.35)),
        light_angle_deg=float(u(0.0, 360.0)),
        texture_amplitude=float(u(0.01, 0.05)),
        texture_scale_px=float(u(0.8, 3.0)),
        blur_px=float(u(0.4, 1.2)),
        sensor_noise=float(u(0.005, 0.03)),
        head_motion_px=float(u(0.3, 2.0)),
        nostril_depth=float(u(0.0, 0.35)),
        chin_shadow=float(u(0.0, 0.25)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def make_speakers(seed: int, counts: Sequence[Tuple[str, int]]) -> List[Speaker]:
    """Speakers for each `(partition, count)`, in order; ids `spk00`, `spk01`, ...

    Every speaker of a held-out partition (anything but `train`) gets a voice variant of its own, used
    by no other speaker, so valid / test / babble voices are never heard in training. Training
    speakers share the remaining variants (in turn), each with its own accent, pitch, rate and face:
    many training voices from few variants. At most `len(VOICE_VARIANTS) - 1` held-out speakers.
    """
    if any(n < 0 for _, n in counts):
        raise ValueError(f"speaker counts must be >= 0, got {list(counts)}")
    held_out = sum(n for partition, n in counts if partition != "train")
    if held_out >= len(VOICE_VARIANTS):
        raise ValueError(
            f"{held_out} held-out (valid/test/babble) speakers requested, at most {len(VOICE_VARIANTS) - 1} distinct "
            "voices are available (one is kept for training)"
        )
    order_rng = np.random.default_rng([seed, _SPEAKER_STREAM])
    variants = [VOICE_VARIANTS[i] for i in order_rng.permutation(len(VOICE_VARIANTS))]
    bases = [BASE_VOICES[i] for i in order_rng.permutation(len(BASE_VOICES))]
    own_variants = iter(variants[:held_out])
    train_variants = variants[held_out:]
    speakers: List[Speaker] = []
    partitions = [partition for partition, n in counts for _ in range(n)]
    num_train = 0
    for k, partition in enumerate(partitions):
        if partition == "train":
            variant = train_variants[num_train % len(train_variants)]
            num_train += 1
        else:
            variant = next(own_variants)
        rng = np.random.default_rng([seed, _SPEAKER_STREAM, k])
        voice = _draw_voice(rng, bases[k % len(bases)], variant)
        speakers.append(Speaker(f"spk{k:02d}", partition, voice, _draw_face(rng)))
    return speakers

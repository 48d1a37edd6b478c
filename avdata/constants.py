"""Rates shared by every layer (the one place they are defined).

Reference parity (av_hubert@258fb50): mouth-ROI video at 25 fps, audio at 16 kHz mono, so one
video frame spans 640 audio samples.
"""

__all__ = ["VIDEO_FPS", "AUDIO_SAMPLE_RATE_HZ", "AUDIO_SAMPLES_PER_FRAME"]

VIDEO_FPS = 25
AUDIO_SAMPLE_RATE_HZ = 16_000
AUDIO_SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE_HZ // VIDEO_FPS

"""Noise sets: MUSAN chunks and babble, LRS3 babble and speech, noise lists; driver prepare_noise.sh."""

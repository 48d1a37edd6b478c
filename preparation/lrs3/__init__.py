"""LRS3: segments, clip lists, pretrain trimming, manifests; driver prepare_lrs3.sh."""

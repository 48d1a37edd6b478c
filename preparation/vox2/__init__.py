"""VoxCeleb2: clip list and the en/all manifests; driver prepare_vox2.sh."""

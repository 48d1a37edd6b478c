"""Face steps: landmark detection and mouth-ROI cropping (shared by every corpus)."""

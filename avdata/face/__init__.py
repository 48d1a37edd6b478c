"""Faces in video frames, shared by `preparation/face` (corpus steps) and `avhubert.transcribe`:

- `landmarks`: dlib 68-point landmarks with face-box tracking (`FaceLandmarker`);
- `mouth_roi`: landmark interpolation, smoothing, mean-face alignment and the 96x96 mouth crop;
- `roi`: both in one call for frames in memory, with face-tracking quality figures.
"""

"""The reference scripts' command lines (spec 6, README mistakes included) still parse, and
`--help` works for every CLI without importing dlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from preparation import align_mouth, count_frames, detect_landmark, lrs3_prepare, vox_prepare
from preparation.lrs3 import manifest as lrs3_manifest
from preparation.noise import lrs3 as lrs3_noise
from preparation.noise import musan as musan_prepare
from preparation.noise import manifest as noise_manifest
from preparation.vox2 import manifest as vox_manifest


def test_detect_landmark_reference_flags():
    args = detect_landmark.main.__globals__["build_parser"]().parse_args(
        [
            "--root",
            "D",
            "--landmark",
            "D/landmark",
            "--manifest",
            "D/file.list",
            "--cnn_detector",
            "c.dat",
            "--face_predictor",
            "p.dat",
            "--ffmpeg",
            "/usr/bin/ffmpeg",
            "--rank",
            "1",
            "--nshard",
            "4",
        ]
    )
    assert (args.video_dir, args.landmark_dir, args.file_list, args.cnn_detector, args.face_predictor) == (
        "D",
        "D/landmark",
        "D/file.list",
        "c.dat",
        "p.dat",
    )
    assert (args.rank, args.nshard) == (1, 4)
    readme = detect_landmark.main.__globals__["build_parser"]().parse_args(
        ["--root", "D", "--landmark", "L", "--manifest", "M", "--face_detector", "p.dat"]
    )
    assert readme.face_predictor == "p.dat"  # the README's wrong name for the predictor


def test_align_mouth_reference_flags():
    args = align_mouth.main.__globals__["build_parser"]().parse_args(
        [
            "--video-direc",
            "D",
            "--landmark-direc",
            "D/landmark",
            "--filename-path",
            "D/file.list",
            "--save-direc",
            "D/video",
            "--mean-face",
            "20words_mean_face.npy",
            "--ffmpeg",
            "ffmpeg",
            "--rank",
            "0",
            "--nshard",
            "1",
            "--crop-width",
            "96",
            "--crop-height",
            "96",
            "--start-idx",
            "48",
            "--stop-idx",
            "68",
            "--window-margin",
            "12",
        ]
    )
    assert (args.video_dir, args.out_dir, args.mean_face, args.window_margin) == (
        "D",
        "D/video",
        "20words_mean_face.npy",
        12,
    )


@pytest.mark.parametrize(
    "module,argv,expected",
    [
        (lrs3_prepare, ["--lrs3", "D", "--ffmpeg", "F", "--rank", "0", "--nshard", "2", "--step", "3"],
         dict(lrs3="D", ffmpeg="F", rank=0, nshard=2, step=3)),
        (count_frames, ["--root", "D", "--manifest", "D/file.list", "--nshard", "2", "--rank", "1"],
         dict(root="D", file_list="D/file.list", nshard=2, rank=1)),
        (lrs3_manifest, ["--lrs3", "D", "--valid-ids", "lrs3-valid.id", "--vocab-size", "1000"],
         dict(lrs3="D", valid_ids="lrs3-valid.id", vocab_size=1000, manifest=None)),
        (lrs3_manifest, ["--lrs3", "D", "--manifest", "D/file.list", "--valid-ids", "v.id"],  # README (PR #47)
         dict(lrs3="D", manifest="D/file.list", valid_ids="v.id")),
        (lrs3_manifest, ["--lrs3", "D", "--valid_ids", "v.id", "--vocab_size", "500"],  # underscore spellings
         dict(valid_ids="v.id", vocab_size=500)),
        (vox_prepare, ["--vox", "D", "--ffmpeg", "F", "--step", "2", "--rank", "0", "--nshard", "1"],
         dict(vox="D", ffmpeg="F", step=2, rank=0, nshard=1)),
        (vox_prepare, ["--root", "D", "--step", "1"], dict(vox="D", step=1)),  # README spelling
        (vox_manifest, ["--vox", "D", "--en-ids", "vox-en.id"], dict(vox="D", en_ids="vox-en.id")),
        (vox_manifest, ["--vox", "D", "--en_ids", "e.id"], dict(en_ids="e.id")),
        (musan_prepare, ["--musan", "D", "--nshard", "4", "--slurm_partition", "P"],
         dict(musan="D", nshard=4, slurm_partition="P", rank=0)),
        (lrs3_noise, ["--lrs3", "D"], dict(lrs3="D", manifest=None)),
        (noise_manifest, ["--musan", "D", "--lrs3", "E"], dict(musan="D", lrs3="E")),
    ],
)
def test_reference_command_lines_parse(module, argv, expected):
    """Each reference spelling lands in the option it means (an alias wired to the wrong one fails)."""
    args = vars(module.build_parser().parse_args(argv))
    assert {k: args.get(k, "<no such option>") for k in expected} == expected


def test_count_frames_root_layout(tmp_path):
    (tmp_path / "file.list").write_text("a\n")
    assert count_frames.main(["--root", str(tmp_path), "--manifest", str(tmp_path / "file.list"), "--no-progress"]) == 0
    assert (tmp_path / "missing_0_1.list").read_text() == "a\n"  # neither video/a.mp4 nor audio/a.wav


CLIS = [
    "face.detect_landmarks",
    "face.crop_mouth_rois",
    "extract_audio",
    "count_frames",
    "lrs3.segment",
    "lrs3.trim",
    "lrs3.lists",
    "lrs3.manifest",
    "own_videos.prepare",
    "own_videos.qa_report",
    "noise.mix_babble",
    "noise.musan",
    "noise.lrs3",
    "noise.manifest",
    "vox2.lists",
    "vox2.manifest",
]

# `python -m preparation.<old>` paths of the flat layout, kept one release (deprecated aliases)
MOVED = {
    "detect_landmarks": "face.detect_landmarks",
    "crop_mouth_rois": "face.crop_mouth_rois",
    "lrs3_segment": "lrs3.segment",
    "lrs3_trim": "lrs3.trim",
    "lrs3_lists": "lrs3.lists",
    "lrs3_manifest": "lrs3.manifest",
    "prepare_own_videos": "own_videos.prepare",
    "qa_report": "own_videos.qa_report",
    "mix_babble": "noise.mix_babble",
    "musan_prepare": "noise.musan",
    "lrs3_noise": "noise.lrs3",
    "noise_manifest": "noise.manifest",
    "vox_lists": "vox2.lists",
    "vox_manifest": "vox2.manifest",
}


def test_help_without_dlib_import():
    code = (
        "import importlib, sys\n"
        f"for name in {CLIS!r}:\n    importlib.import_module('preparation.' + name).build_parser().format_help()\n"
        "assert 'dlib' not in sys.modules and 'fairseq' not in sys.modules, sorted(sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_moved_module_paths_keep_working_with_a_deprecation_message():
    """Each old `python -m preparation.<step>` prints a deprecation to stderr and runs the new CLI."""
    code = (
        "import contextlib, io, runpy, sys\n"
        f"for old, new in {MOVED!r}.items():\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    sys.argv = [old, '--help']\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            runpy.run_module('preparation.' + old, run_name='__main__', alter_sys=True)\n"
        "        except SystemExit as e:\n"
        "            assert e.code in (0, None), (old, e.code)\n"
        "    assert f'python -m preparation.{new}' in err.getvalue() and 'deprecated' in err.getvalue(), (old, err.getvalue())\n"
        "    assert out.getvalue().startswith('usage:'), (old, out.getvalue()[:200])\n"
        "print('ok', len(sys.argv))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "preparation.mix_babble", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "deprecated" in res.stderr and "--num-mixtures" in res.stdout

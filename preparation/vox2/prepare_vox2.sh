#!/usr/bin/env bash
# Prepare VoxCeleb2 for AV-HuBERT pre-training: clip list, audio, landmarks, mouth ROIs, frame
# counts and the en/all manifests. Each stage is one CLI of `preparation/` (see its --help); this
# driver only wires them together, as prepare_lrs3.sh does for LRS3.
#
# Expected input layout (the VoxCeleb2 release):
#   $VOX/{dev,test}/mp4/<speaker>/<youtube id>/<clip>.mp4
#
# Output (all under $VOX): file.list, audio/, landmark/, video/ (96x96 mouth ROIs), nframes.tsv,
#   missing.list, en_data/train.tsv (with --en-ids), all_data/train.tsv.
#
# Usage:
#   preparation/vox2/prepare_vox2.sh --vox DIR [--stage 0] [--stop-stage 5] [--nshard 1]
#       [--num-workers 1] [--en-ids vox-en.id] [--mean-face F] [--ffmpeg PATH] [--overwrite]
#
# Stages: 0 file.list | 1 audio | 2 landmarks | 3 mouth ROIs | 4 count frames | 5 manifests
# Sharded stages (1-4) loop over ranks 0..nshard-1 locally; on Slurm, call the same CLIs
# with --rank/--nshard from an array job (or pass --slurm-partition to a CLI).
# A stage that finished writes $VOX/.prepare_vox2.<stage>_<name>.done and is skipped next time
# (--overwrite redoes them; the CLIs themselves also skip finished clips).

set -euo pipefail

vox=""
stage=0
stop_stage=5
nshard=1
num_workers=1
en_ids=""
mean_face=""
ffmpeg=""
overwrite=0
python=${PYTHON:-python}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --vox|--root) vox=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
    --nshard) nshard=$2; shift 2 ;;
    --num-workers) num_workers=$2; shift 2 ;;
    --en-ids|--en_ids) en_ids=$2; shift 2 ;;
    --mean-face) mean_face=$2; shift 2 ;;
    --ffmpeg) ffmpeg=$2; shift 2 ;;
    --overwrite) overwrite=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$vox" ]] || { echo "--vox DIR is required" >&2; exit 2; }
[[ -d "$vox" ]] || { echo "VoxCeleb2 folder not found: $vox" >&2; exit 2; }

driver=prepare_vox2
marker_dir=$vox
# shellcheck source=../stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stages.sh"

common=(--no-progress)
[[ $overwrite -eq 1 ]] && common+=(--overwrite)
ffmpeg_opt=()
[[ -n "$ffmpeg" ]] && ffmpeg_opt=(--ffmpeg "$ffmpeg")
mean_face_opt=()
[[ -n "$mean_face" ]] && mean_face_opt=(--mean-face "$mean_face")
en_opt=()
[[ -n "$en_ids" ]] && en_opt=(--en-ids "$en_ids")

run_stage 0 lists "$python" -m preparation.vox2.lists --vox "$vox" "${common[@]}"
run_stage 1 audio each_rank "$python" -m preparation.extract_audio --video-dir "$vox" --file-list "$vox/file.list" \
  --audio-dir "$vox/audio" --num-workers "$num_workers" "${ffmpeg_opt[@]}" "${common[@]}"
run_stage 2 landmarks each_rank "$python" -m preparation.face.detect_landmarks --video-dir "$vox" \
  --file-list "$vox/file.list" --landmark-dir "$vox/landmark" --num-workers "$num_workers" "${common[@]}"
# Clips without a face fail here and are listed in video/failures.*.tsv; the run goes on and
# the manifests leave them out (stage 4 lists them in missing.list).
run_stage 3 crop each_rank "$python" -m preparation.face.crop_mouth_rois --video-dir "$vox" \
  --landmark-dir "$vox/landmark" --file-list "$vox/file.list" --out-dir "$vox/video" \
  --num-workers "$num_workers" "${mean_face_opt[@]}" "${ffmpeg_opt[@]}" "${common[@]}" \
  || log "stage 3: some clips failed, see $vox/video/failures.crop_mouth_rois.*.tsv"
count_stage() {
  each_rank "$python" -m preparation.count_frames --video-dir "$vox/video" --audio-dir "$vox/audio" \
    --file-list "$vox/file.list" --out-dir "$vox" --num-workers "$num_workers" "${common[@]}"
  "$python" -m preparation.count_frames --video-dir "$vox/video" --audio-dir "$vox/audio" \
    --file-list "$vox/file.list" --out-dir "$vox" --nshard "$nshard" --merge
}
run_stage 4 count count_stage
run_stage 5 manifest "$python" -m preparation.vox2.manifest --vox "$vox" "${en_opt[@]}" "${common[@]}"
log "finished stages $stage..$stop_stage"

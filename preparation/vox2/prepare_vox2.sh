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

# shellcheck source=../stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stages.sh"
driver=prepare_vox2
stop_stage=5
vox=""
en_ids=""
mean_face=""
ffmpeg=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --vox|--root) vox=$2; shift 2 ;;
    --en-ids|--en_ids) en_ids=$2; shift 2 ;;
    --mean-face) mean_face=$2; shift 2 ;;
    --ffmpeg) ffmpeg=$2; shift 2 ;;
    *) shared_option "$@"; shift "$shift_by" ;;
  esac
done
require_dir --vox "$vox" VoxCeleb2
driver_setup "$vox"

en_opt=()
[[ -n "$en_ids" ]] && en_opt=(--en-ids "$en_ids")

run_stage 0 lists "$python" -m preparation.vox2.lists --vox "$vox" "${common[@]}"
clip_stages 1 "$vox"
run_stage 5 manifest "$python" -m preparation.vox2.manifest --vox "$vox" "${en_opt[@]}" "${common[@]}"
log "finished stages $stage..$stop_stage"

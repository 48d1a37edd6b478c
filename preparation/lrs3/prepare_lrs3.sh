#!/usr/bin/env bash
# Prepare LRS3 for AV-HuBERT: segments, clips, audio, landmarks, mouth ROIs, frame counts,
# manifests + vocabulary, QA report and LRS3 noise sets. Each stage is one CLI of
# `preparation/` (see its --help); this driver only wires them together.
#
# Expected input layout (the VGG "loosely cropped face" release):
#   $LRS3/pretrain/<spk>/<clip>.mp4 + .txt
#   $LRS3/trainval/<spk>/<clip>.mp4 + .txt
#   $LRS3/test/<spk>/<clip>.mp4 + .txt
#
# Output (all under $LRS3): short-pretrain.csv, short-pretrain/, file.list, label.list,
#   audio/, landmark/, video/ (96x96 mouth ROIs), nframes.tsv, spm<V>/, 30h_data/, 433h_data/,
#   qa/, noise/.
#
# Usage:
#   preparation/lrs3/prepare_lrs3.sh --lrs3 DIR [--stage 0] [--stop-stage 9] [--nshard 1]
#       [--num-workers 1] [--valid-ids lrs3-valid.id] [--vocab-size 1000] [--mean-face F]
#       [--max-len-sec 15] [--ffmpeg PATH] [--overwrite]
#
# Stages: 0 segment pretrain | 1 file.list/label.list | 2 trim pretrain | 3 audio |
#         4 landmarks | 5 mouth ROIs | 6 count frames | 7 manifests + vocabulary | 8 QA |
#         9 LRS3 noise
# Sharded stages (2-6) loop over ranks 0..nshard-1 locally; on Slurm, call the same CLIs
# with --rank/--nshard from an array job (or pass --slurm-partition to a CLI).
# A stage that finished writes $LRS3/.prepare_lrs3.<stage>.done and is skipped next time
# (--overwrite removes the guards; the CLIs themselves also skip finished clips).

set -euo pipefail

# shellcheck source=../stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stages.sh"
driver=prepare_lrs3
stop_stage=9
lrs3=""
valid_ids=""
vocab_size=1000
mean_face=""
max_len_sec=15
ffmpeg=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --lrs3) lrs3=$2; shift 2 ;;
    --valid-ids) valid_ids=$2; shift 2 ;;
    --vocab-size) vocab_size=$2; shift 2 ;;
    --mean-face) mean_face=$2; shift 2 ;;
    --max-len-sec) max_len_sec=$2; shift 2 ;;
    --ffmpeg) ffmpeg=$2; shift 2 ;;
    *) shared_option "$@"; shift "$shift_by" ;;
  esac
done
require_dir --lrs3 "$lrs3" LRS3
driver_setup "$lrs3"

run_stage 0 segment "$python" -m preparation.lrs3.segment --lrs3 "$lrs3" --max-len-sec "$max_len_sec" "${common[@]}"
run_stage 1 lists "$python" -m preparation.lrs3.lists --lrs3 "$lrs3" "${common[@]}"
run_stage 2 trim each_rank "$python" -m preparation.lrs3.trim --lrs3 "$lrs3" --num-workers "$num_workers" \
  "${ffmpeg_opt[@]}" "${common[@]}"
clip_stages 3 "$lrs3"
valid_opt=()
[[ -n "$valid_ids" ]] && valid_opt=(--valid-ids "$valid_ids")
run_stage 7 manifest "$python" -m preparation.lrs3.manifest --lrs3 "$lrs3" --vocab-size "$vocab_size" \
  "${valid_opt[@]}" "${common[@]}"
run_stage 8 qa "$python" -m preparation.own_videos.qa_report --file-list "$lrs3/file.list" --video-dir "$lrs3" \
  --landmark-dir "$lrs3/landmark" --roi-dir "$lrs3/video" --audio-dir "$lrs3/audio" --out-dir "$lrs3/qa" \
  --num-workers "$num_workers" "${mean_face_opt[@]}" "${common[@]}"
run_stage 9 noise "$python" -m preparation.noise.lrs3 --lrs3 "$lrs3" "${common[@]}"
log "finished stages $stage..$stop_stage"

#!/usr/bin/env bash
# Prepare the noise sets for noise-augmented training and noisy evaluation: MUSAN chunks, speaker
# split, babble mixtures and sample counts, the LRS3 babble / interfering-speech sets, and the
# noise lists (`task.noise_wav`). Each stage is one CLI of `preparation/noise/` (see its --help);
# this driver only wires them together, as prepare_lrs3.sh does for LRS3.
#
# Needs MUSAN (16 kHz mono: $MUSAN/{speech,music,noise}/<sub>/<name>.wav) and, for stages 4-5, an
# LRS3 folder prepared through its manifests (prepare_lrs3.sh stages 0-7: 433h_data/train.tsv).
#
# Output: $MUSAN/short-musan/ (chunks, speech split, babble/, nframes.audio), $LRS3/noise/
#   (babble/, speech/), $MUSAN/tsv/{babble,music,noise,all}/{train,valid,test}.tsv.
#
# Usage:
#   preparation/noise/prepare_noise.sh --musan DIR --lrs3 DIR [--stage 0] [--stop-stage 5]
#       [--nshard 1] [--num-workers 1] [--num-babble "8000 1000 1000"] [--num-speakers 30]
#       [--chunk-sec 10] [--seed 0] [--overwrite]
#
# Stages: 0 MUSAN 10-s chunks | 1 speech speaker split | 2 babble mixtures | 3 sample counts |
#         4 LRS3 babble + interfering speech | 5 noise lists
# Sharded stages (0, 2) loop over ranks 0..nshard-1 locally (or pass --slurm-partition to a CLI).
# A stage that finished writes $MUSAN/.prepare_noise.<stage>_<name>.done and is skipped next
# time (--overwrite redoes them).

set -euo pipefail

# shellcheck source=../stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stages.sh"
driver=prepare_noise
stop_stage=5
musan=""
lrs3=""
num_babble=""
num_speakers=""
chunk_sec=""
seed=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --musan) musan=$2; shift 2 ;;
    --lrs3) lrs3=$2; shift 2 ;;
    --num-babble) num_babble=$2; shift 2 ;;
    --num-speakers) num_speakers=$2; shift 2 ;;
    --chunk-sec) chunk_sec=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) shared_option "$@"; shift "$shift_by" ;;
  esac
done
require_dir --musan "$musan" MUSAN
if [[ $stop_stage -ge 4 ]]; then require_dir --lrs3 "$lrs3" "LRS3 (stages 4-5)"; fi
driver_setup "$musan"

common+=(--seed "$seed")
babble_opt=()
# shellcheck disable=SC2206  # three counts, split on spaces on purpose
[[ -n "$num_babble" ]] && babble_opt=(--num-babble $num_babble)
[[ -n "$num_speakers" ]] && babble_opt+=(--num-speakers "$num_speakers")
[[ -n "$chunk_sec" ]] && babble_opt+=(--chunk-sec "$chunk_sec")
musan_cli=("$python" -m preparation.noise.musan --musan "$musan" "${babble_opt[@]}" "${common[@]}")

run_stage 0 chunk each_rank "${musan_cli[@]}" --steps chunk --num-workers "$num_workers"
run_stage 1 split "${musan_cli[@]}" --steps split
run_stage 2 babble each_rank "${musan_cli[@]}" --steps babble --num-workers "$num_workers"
run_stage 3 count "${musan_cli[@]}" --steps count
run_stage 4 lrs3 "$python" -m preparation.noise.lrs3 --lrs3 "$lrs3" "${common[@]}"
run_stage 5 lists "$python" -m preparation.noise.manifest --musan "$musan" --lrs3 "$lrs3" "${common[@]}"
log "finished stages $stage..$stop_stage"

# Shared by the corpus drivers (lrs3/prepare_lrs3.sh, vox2/prepare_vox2.sh, noise/prepare_noise.sh).
# A driver sources it first (defaults: stage 0, nshard 1, num_workers 1, overwrite 0, python
# $PYTHON or python), sets `driver` (its name) and `stop_stage`, parses its own options and hands
# every other one to `shared_option`, then calls `driver_setup MARKER_DIR`. Defined here:
#   shared_option "$@"         --stage --stop-stage --nshard --num-workers --overwrite --help, or
#                              exit 2 on an unknown option; sets `shift_by`
#   require_dir FLAG PATH WHAT exit 2 unless PATH is given and is a folder
#   driver_setup MARKER_DIR    put the repository on PYTHONPATH; set `marker_dir` and the option
#                              arrays `common` (--no-progress [--overwrite]), `ffmpeg_opt`,
#                              `mean_face_opt` (from `ffmpeg` / `mean_face` where the driver has them)
#   log MSG...                 timestamped message
#   run_stage N NAME CMD...    run CMD when N is in [stage, stop_stage] and not marked done; on
#                              success touch $marker_dir/.$driver.N_NAME.done
#   each_rank CMD...           CMD --rank r --nshard $nshard for r = 0..nshard-1
#   clip_stages N ROOT         stages N..N+3 over ROOT/file.list (clips ROOT/{id}.mp4): audio,
#                              landmarks, mouth ROIs (ROOT/video), frame counts (ROOT/nframes.tsv)

stage=0
nshard=1
num_workers=1
overwrite=0
python=${PYTHON:-python}

shared_option() {
  shift_by=2
  case "$1" in
    --stage) stage=$2 ;;
    --stop-stage|--stop_stage) stop_stage=$2 ;;
    --nshard) nshard=$2 ;;
    --num-workers) num_workers=$2 ;;
    --overwrite) overwrite=1; shift_by=1 ;;
    -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
}

require_dir() {
  local flag=$1 path=$2 what=$3
  [[ -n "$path" ]] || { echo "$flag DIR is required" >&2; exit 2; }
  [[ -d "$path" ]] || { echo "$what folder not found: $path" >&2; exit 2; }
}

driver_setup() {
  marker_dir=$1
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export PYTHONPATH="${repo_root}${PYTHONPATH:+:$PYTHONPATH}"
  common=(--no-progress)
  if [[ $overwrite -eq 1 ]]; then common+=(--overwrite); fi
  ffmpeg_opt=()
  if [[ -n "${ffmpeg:-}" ]]; then ffmpeg_opt=(--ffmpeg "$ffmpeg"); fi
  mean_face_opt=()
  if [[ -n "${mean_face:-}" ]]; then mean_face_opt=(--mean-face "$mean_face"); fi
}

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${driver}) $*"; }

run_stage() {
  local n=$1 name=$2; shift 2
  local marker="$marker_dir/.${driver}.${n}_${name}.done"
  if [[ $n -lt $stage || $n -gt $stop_stage ]]; then return 0; fi
  if [[ -f "$marker" && $overwrite -eq 0 ]]; then log "stage $n ($name): done before, skipping"; return 0; fi
  log "stage $n ($name)"
  "$@"
  touch "$marker"
}

each_rank() {
  local r
  for ((r = 0; r < nshard; r++)); do "$@" --rank "$r" --nshard "$nshard"; done
}

_count_frames() {
  local root=$1
  each_rank "$python" -m preparation.count_frames --video-dir "$root/video" --audio-dir "$root/audio" \
    --file-list "$root/file.list" --out-dir "$root" --num-workers "$num_workers" "${common[@]}"
  "$python" -m preparation.count_frames --video-dir "$root/video" --audio-dir "$root/audio" \
    --file-list "$root/file.list" --out-dir "$root" --nshard "$nshard" --merge
}

clip_stages() {
  local n=$1 root=$2
  run_stage "$n" audio each_rank "$python" -m preparation.extract_audio --video-dir "$root" \
    --file-list "$root/file.list" --audio-dir "$root/audio" --num-workers "$num_workers" "${ffmpeg_opt[@]}" "${common[@]}"
  run_stage $((n + 1)) landmarks each_rank "$python" -m preparation.face.detect_landmarks --video-dir "$root" \
    --file-list "$root/file.list" --landmark-dir "$root/landmark" --num-workers "$num_workers" "${common[@]}"
  # Clips without a face fail here and are listed in video/failures.*.tsv; the run goes on and
  # the manifests leave them out (the count stage lists them in missing.list).
  run_stage $((n + 2)) crop each_rank "$python" -m preparation.face.crop_mouth_rois --video-dir "$root" \
    --landmark-dir "$root/landmark" --file-list "$root/file.list" --out-dir "$root/video" \
    --num-workers "$num_workers" "${mean_face_opt[@]}" "${ffmpeg_opt[@]}" "${common[@]}" \
    || log "stage $((n + 2)): some clips failed, see $root/video/failures.crop_mouth_rois.*.tsv"
  run_stage $((n + 3)) count _count_frames "$root"
}

# Shared by the corpus drivers (lrs3/prepare_lrs3.sh, vox2/prepare_vox2.sh, noise/prepare_noise.sh):
# source it after setting `driver` (its name), `marker_dir`, `stage`, `stop_stage`, `nshard` and
# `overwrite`. It puts the repository on PYTHONPATH and defines:
#   log MSG...                 timestamped message
#   run_stage N NAME CMD...    run CMD when N is in [stage, stop_stage] and not marked done; on
#                              success touch $marker_dir/.$driver.N_NAME.done
#   each_rank CMD...           CMD --rank r --nshard $nshard for r = 0..nshard-1

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="${repo_root}${PYTHONPATH:+:$PYTHONPATH}"

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

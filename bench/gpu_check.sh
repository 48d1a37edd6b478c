#!/usr/bin/env bash
# One prepared GPU check (issue 10) for a session that has the GPU machine. Run from the checkout root.
#
# It copies nothing itself: it expects .devkit/ (a copy of ../shared/gpu, the offline install kit,
# see its README.md) in the checkout, carried to the GPU machine. On the development machine:
#     mkdir -p .devkit && cp ../shared/gpu/* .devkit/
#     grep -qx '/.devkit/' .git/info/exclude || echo '/.devkit/' >> .git/info/exclude
# then on the GPU machine (device tool: carry=[".devkit"], timeout_s=600):
#     bash bench/gpu_check.sh
#
# Steps: install the kit (fairseq-fixed builds in ~145 s), install this project (pip -e, no deps),
# run `pytest -m gpu` (tests/gpu: fp16/bf16 pre-training + resume, Base config, fine-tuning, decoding,
# clustering, models on CUDA; estimated 4-5 min on an H200, not yet measured), then, while the
# BUDGET_S seconds last, the Base pre-training step benchmark on CUDA, bench/bench_gpu.py (per precision:
# pre-training step and largest batch, seq2seq fine-tuning step, beam-5 decoding) and the clean-exit tests.
# Writes under "$OUT" (default ./gpu_check_out; 8 files, the device tool's limit): env.txt,
# install.log, pytest_gpu.log + junit_gpu.xml, bench_pretrain.log, pytest_cpu.log + junit_cpu.xml,
# summary.txt. Exit status: that of pytest -m gpu.
set -uo pipefail

OUT=${OUT:-$PWD/gpu_check_out}
BUDGET_S=${BUDGET_S:-570}  # the whole script, inside the device tool's 600 s per command
mkdir -p "$OUT"
t_start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - t_start )) s] $*" | tee -a "$OUT/summary.txt"; }

if [ ! -f .devkit/install.sh ]; then
  log "no .devkit/install.sh: copy ../shared/gpu into .devkit/ and carry it (see the header of this script)"
  exit 2
fi

{ nvidia-smi; echo; python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; nproc; free -g; } > "$OUT/env.txt" 2>&1
log "env: $(grep -m1 "^python " "$OUT/env.txt")"

# shellcheck disable=SC1091
if ! source .devkit/install.sh > "$OUT/install.log" 2>&1; then
  log "kit install failed (tail of install.log follows)"; tail -n 40 "$OUT/install.log"; exit 3
fi
log "kit installed: $(grep -E 'fairseq-fixed installed|^torch ' "$OUT/install.log" | tr '\n' ' ')"
# Subprocesses whose PYTHONPATH is rewritten (tests' run_cli) must still see the kit: a .pth file.
user_site=$(python3 -m site --user-site)
mkdir -p "$user_site" && echo "$SITE" > "$user_site/gpu_devkit.pth"
if python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$OUT/install.log" 2>&1; then
  log "project installed (pip -e)"
else
  log "pip -e . failed (see install.log); the project is importable through PYTHONPATH=$PWD"
fi

left() { echo $(( BUDGET_S - ($(date +%s) - t_start) )); }
gpu_timeout=$(( $(left) - 90 ))
PYTHONUNBUFFERED=1 timeout "$gpu_timeout" python3 -m pytest -m gpu -v -p no:cacheprovider --durations=0 \
  --junitxml="$OUT/junit_gpu.xml" tests/gpu > "$OUT/pytest_gpu.log" 2>&1
gpu_rc=$?
log "pytest -m gpu (limit $gpu_timeout s): exit $gpu_rc: $(tail -n 1 "$OUT/pytest_gpu.log")"

if [ "$(left)" -gt 60 ]; then
  PYTHONUNBUFFERED=1 timeout "$(( $(left) - 10 ))" python3 bench/bench_pretrain.py --device cuda > "$OUT/bench_pretrain.log" 2>&1
  log "bench_pretrain --device cuda: exit $?: $(grep -E '^(train step|dataset)' "$OUT/bench_pretrain.log" | tr '\n' ' ')"
else
  log "bench_pretrain skipped ($(left) s left)"
fi

# bench_gpu (issue 13): bf16 first (the target precision); its output goes into bench_pretrain.log
# (8 files at most come back); it leaves 160 s for the clean-exit tests
if [ "$(left)" -gt 220 ]; then
  PYTHONUNBUFFERED=1 timeout "$(( $(left) - 160 ))" python3 bench/bench_gpu.py --dtypes bf16 fp16 fp32 --max-batch 256 \
    >> "$OUT/bench_pretrain.log" 2>&1
  log "bench_gpu: exit $?: $(grep -E '^(bf16|fp16|fp32)$|pre-training|decoding' "$OUT/bench_pretrain.log" | tr '\n' ' ' | cut -c1-600)"
else
  log "bench_gpu skipped ($(left) s left)"
fi

if [ "$(left)" -gt 150 ]; then
  PYTHONUNBUFFERED=1 timeout "$(( $(left) - 10 ))" python3 -m pytest -v -p no:cacheprovider --junitxml="$OUT/junit_cpu.xml" \
    tests/plugin/test_clean_exit.py -m "not slow" > "$OUT/pytest_cpu.log" 2>&1
  log "clean-exit tests: exit $?: $(tail -n 1 "$OUT/pytest_cpu.log")"
else
  log "clean-exit tests skipped ($(left) s left)"
fi
exit "$gpu_rc"

"""`make demo`: the whole AV-HuBERT method on the built-in corpus, on CPU, in one command.

Stages (a rerun reuses every finished stage; outputs under `--out-dir`, default `demo_out/`):
  1. corpus    espeak-ng speech + phoneme-driven mouth videos, babble noise   -> data/
  2. cluster   MFCC features, k-means, 100 Hz frame labels (iteration 1)      -> labels/
  3. pretrain  AV-HuBERT masked cluster prediction (conf/demo/pretrain.yaml) on the 1800
               training utterances, without their transcripts                 -> pretrain/
     (+ `--iterations N`: stages 2-3 again N - 1 times, k-means on the previous model's layer-3
     features, 25 Hz labels, a new model                        -> labels_itK/, pretrain_itK/)
  4. finetune  CTC fine-tuning from the pre-trained encoder (conf/demo/finetune_ctc.yaml) -> finetune/
     (+ `--compare-scratch`: the same fine-tuning from random initialisation -> scratch/)
  5. decode    infer_s2s in audio, video and audio-visual modes, clean test audio and babble
               at 10, 5, 0, -5 dB                                             -> decode/
  6. report    WER table (printed, results.md) and wer_vs_snr.png
  7. transcribe one test video (its mouth video with its speech muxed in) with
               `python -m avhubert.transcribe`, printed next to the reference  -> transcribe/
"""

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from avdata.procs import set_parent_death_signal

from .fast_malloc import find_tcmalloc, with_tcmalloc

if TYPE_CHECKING:
    from demo.corpus import CorpusPaths

logger = logging.getLogger("demo.run")

REPO = Path(__file__).resolve().parents[1]
CONDITIONS: List[Optional[float]] = [None, 10.0, 5.0, 0.0, -5.0]  # None = clean
MODES = {"audio": ["audio"], "video": ["video"], "audio-visual": ["audio", "video"]}


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _done(path: Path) -> bool:
    if path.exists():
        print(f"    reusing finished stage ({path.parent})", flush=True)
        return True
    return False


# The demo's trainers run one intra-op thread per process: the tiny models' kernels are too small to
# split (on the 2-core CPU, 80 pre-training updates took 43 s with 1 thread and 54 s with 2; 140 CTC
# fine-tuning updates 27 s and 40 s). The second core runs a second data-parallel rank instead.
TRAIN_THREADS = 1
TRAIN_PROCS = 2
# Training utterances with transcripts; pre-training sees the same speech without them (as AV-HuBERT's
# LRS3 433 h / 433 h setting). Labelling all 1800 instead of 600 (pre-training on the same 1800) moved
# test WER video 37.2 -> 32.6 %, audio-visual 14.2 / 42.1 -> 11.1 / 31.0 % (clean / -5 dB); clean audio
# stayed near 30 % until the babble share and SNRs of fine-tuning changed (conf/demo/finetune_ctc.yaml).
LABELLED_UTTERANCES = 1800
# More utterances of the training speakers for pre-training only (`--unlabelled`).
UNLABELLED_UTTERANCES = 0
# Iterations after the first (`--iterations`): k-means (ITERATION_CLUSTERS) on the output of encoder
# layer ITERATION_LAYER (of 4) of the previous model, 25 Hz labels, a new model pre-trained from random
# initialisation, as AV-HuBERT's iterations 2-5 (spec section 7).
ITERATION_LAYER = 3
ITERATION_CLUSTERS = 100
# Test decodes run two conditions at a time, in processes of one thread each.
DECODE_WORKERS = 2


def _train_env(threads: Optional[int]) -> Dict[str, str]:
    """The environment of a child command: the repo importable, tcmalloc preloaded when installed,
    `threads` OMP/MKL threads (default: inherited)."""
    env = with_tcmalloc(dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _kill_when_one_fails(main: subprocess.Popen, companions: Sequence[subprocess.Popen]) -> None:
    """Poll the companion ranks; when one exits non-zero, kill `main` (it would otherwise wait in a
    collective until gloo's 30-minute timeout)."""
    while main.poll() is None:
        if any(c.poll() not in (None, 0) for c in companions):
            main.kill()
            return
        time.sleep(0.5)


def run_logged(cmd: Sequence[str], log_path: Path, show: Sequence[str] = ("[train_inner]", "done training"),
               threads: Optional[int] = None, companions: Sequence[subprocess.Popen] = ()) -> None:
    """Run a command, keep its full log in `log_path`, echo the progress lines; `threads` sets the
    command's OMP/MKL thread count (default: inherited). `companions`: processes that run alongside
    (the other ranks of a distributed run); the command is killed when one of them fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_train_env(threads))
        if companions:
            threading.Thread(target=_kill_when_one_fails, args=(proc, companions), daemon=True).start()
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if any(tag in line for tag in show):
                print("    " + _short(line), flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"command failed (exit {proc.returncode}), log: {log_path}\n  {' '.join(cmd)}")


def _short(line: str) -> str:
    """A fairseq json log line -> 'update N loss X ...'."""
    line = line.rstrip()
    if " - {" in line:
        rec = json.loads(line.split(" - ", 1)[1])
        keys = [k for k in ("update", "loss", "accuracy", "correct_m_0", "wps") if k in rec]
        return " ".join(f"{k} {rec[k]}" for k in keys)
    return line[-120:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hydra_train(conf: str, exp: Path, overrides: Sequence[str], procs: int = TRAIN_PROCS) -> Path:
    """`fairseq-hydra-train` with `conf/demo/{conf}.yaml`; `procs` > 1 runs that many data-parallel
    CPU ranks (gloo over localhost, fairseq's legacy_ddp): each rank reads its own batches of
    `dataset.max_tokens`, gradients are summed, rank 0 logs and writes the checkpoints."""
    train_bin = Path(sys.executable).parent / "fairseq-hydra-train"
    cmd = [str(train_bin), "--config-dir", str(REPO / "conf" / "demo"), "--config-name", conf,
           f"common.user_dir={REPO / 'avhubert'}", f"checkpoint.save_dir={exp / 'checkpoints'}", *overrides]
    if procs == 1:
        run_logged([*cmd, f"hydra.run.dir={exp}"], exp / "train.log", threads=TRAIN_THREADS)
        return exp / "checkpoints" / "checkpoint_last.pt"
    dist = [f"distributed_training.distributed_world_size={procs}", "distributed_training.distributed_backend=gloo",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{_free_port()}",
            "distributed_training.distributed_no_spawn=true"]
    exp.mkdir(parents=True, exist_ok=True)
    others: List[subprocess.Popen] = []
    try:
        for rank in range(1, procs):
            with open(exp / f"train.rank{rank}.log", "w") as log:  # the child keeps its own handle
                others.append(subprocess.Popen(
                    [*cmd, *dist, f"distributed_training.distributed_rank={rank}", f"hydra.run.dir={exp / f'rank{rank}'}"],
                    stdout=log, stderr=subprocess.STDOUT, env=_train_env(TRAIN_THREADS),
                    preexec_fn=set_parent_death_signal))
        run_logged([*cmd, *dist, "distributed_training.distributed_rank=0", f"hydra.run.dir={exp}"], exp / "train.log",
                   threads=TRAIN_THREADS, companions=others)
        for other in others:
            other.wait()
    finally:
        stopped = set()
        for other in others:
            if other.poll() is None:
                other.kill()
                other.wait()
                stopped.add(other.pid)
        for rank, other in enumerate(others, start=1):  # a failed rank's log says why rank 0 was stopped
            if other.pid not in stopped and other.returncode != 0:
                raise RuntimeError(f"training rank {rank} failed (exit {other.returncode}), log: "
                                   f"{exp / f'train.rank{rank}.log'}")
    return exp / "checkpoints" / "checkpoint_last.pt"


def _init_decode_worker() -> None:
    """As `main`: warnings on the console, infer_s2s's per-utterance lines in its decode.log only."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)


def _decode_one(ckpt: str, data: str, results_path: str, beam: int, modalities: List[str], snr: Optional[float],
                max_len_b: int, loader_workers: Optional[int] = None) -> Tuple[float, int, float]:
    """One `infer_s2s` decode of the test split -> (WER, utterances, seconds); `loader_workers`:
    its data loader processes (default: infer_s2s's)."""
    from omegaconf import OmegaConf

    from avhubert.infer_s2s import InferConfig, decode

    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = ckpt, results_path
    cfg.dataset.gen_subset, cfg.dataset.max_tokens = "test", 2000
    if loader_workers is not None:
        cfg.dataset.num_workers = loader_workers
    cfg.generation.beam, cfg.generation.max_len_a, cfg.generation.max_len_b = beam, 0.0, max_len_b
    cfg.override.modalities, cfg.override.data = modalities, data
    if snr is not None:
        cfg.override.noise_wav, cfg.override.noise_prob, cfg.override.noise_snr = str(Path(data) / "noise"), 1.0, snr
    t0 = time.perf_counter()
    res = decode(cfg)
    return float(res["wer"]), int(res["num_utts"]), time.perf_counter() - t0


def decode_grid(ckpt: Path, data: Path, out: Path, beam: int, conditions: Sequence[Optional[float]] = CONDITIONS,
                max_len_b: int = 12, workers: int = DECODE_WORKERS) -> Dict[str, Dict[str, float]]:
    """WER for every mode x condition (video-only ignores the audio noise: decoded once); at most
    `max_len_b` output tokens per utterance (12 sentencepiece tokens cover the corpus's 1-4 words).
    `workers` > 1 decodes that many conditions at a time, in processes of one thread each."""
    cache = out / "wer.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    names = {snr: "clean" if snr is None else f"{snr:g} dB" for snr in conditions}
    jobs = {(mode, names[snr]): (str(ckpt), str(data), str(out / mode.replace("-", "_") / names[snr].replace(" ", "")),
                                 beam, mods, snr, max_len_b)
            for mode, mods in MODES.items() for snr in conditions if not (mode == "video" and snr is not None)}
    done: Dict[Tuple[str, str], float] = {}

    def report(key: Tuple[str, str], result: Tuple[float, int, float]) -> None:
        done[key] = result[0]
        print(f"    {key[0]:>12} {key[1]:>6}: WER {result[0]:6.2f}%  ({result[1]} utts, {result[2]:.0f} s)", flush=True)

    if min(workers, len(jobs)) <= 1:
        for key, args in jobs.items():
            report(key, _decode_one(*args))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_decode_worker) as pool:
            futures = {pool.submit(_decode_one, *args, loader_workers=0): key for key, args in jobs.items()}
            for future in as_completed(futures):
                report(futures[future], future.result())
    results = {mode: {names[snr]: done[(mode, names[snr] if mode != "video" else "clean")] for snr in conditions}
               for mode in MODES}
    cache.write_text(json.dumps(results, indent=2))
    return results


def chance_wer(data: Path) -> float:
    """WER of always answering the most frequent training transcript (a chance baseline)."""
    from collections import Counter

    from avhubert.scoring import corpus_wer

    train = (data / "train.wrd").read_text().splitlines()
    test = (data / "test.wrd").read_text().splitlines()
    guess = Counter(train).most_common(1)[0][0]
    return corpus_wer(test, [guess] * len(test))


def write_report(out: Path, grids: Dict[str, Dict[str, Dict[str, float]]], chance: float, wall: float) -> str:
    cols = ["clean"] + [f"{c:g} dB" for c in CONDITIONS[1:]]
    lines = ["# AV-HuBERT demo: test WER (%) on unseen speakers", "",
             f"Chance baseline (most frequent training transcript): {chance:.1f}% WER. Wall time {wall / 60:.1f} min.", ""]
    for model, grid in grids.items():
        lines += [f"## {model}", "", "| mode | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for mode, row in grid.items():
            lines.append(f"| {mode} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    return text


def plot(out: Path, grids: Dict[str, Dict[str, Dict[str, float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = [c for c in CONDITIONS[1:]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"pretrained": "-", "scratch": "--"}
    colors = {"audio": "tab:blue", "video": "tab:green", "audio-visual": "tab:red"}
    for model, grid in grids.items():
        for mode, row in grid.items():
            ys = [row[f"{s:g} dB"] for s in snrs]
            ax.plot(snrs, ys, styles.get(model, "-"), marker="o", color=colors[mode], label=f"{mode} ({model})")
            ax.scatter([12.5], [row["clean"]], color=colors[mode], marker="*" if model == "pretrained" else "x")
    ax.set_xticks(snrs + [12.5], [f"{s:g}" for s in snrs] + ["clean"])
    ax.invert_xaxis()
    ax.set_xlabel("babble SNR (dB)")
    ax.set_ylabel("WER (%)")
    ax.set_title("AV-HuBERT demo: WER vs SNR (unseen test speakers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "wer_vs_snr.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def transcribe_example(ckpt: Path, data: Path, out: Path, beam: int) -> Dict[str, str]:
    """The first test utterance as one mp4 (mouth video + speech) through the transcribe command."""
    from avdata.ffmpeg import run_ffmpeg
    from avdata.manifest import read_manifest, resolve

    root, rows = read_manifest(data / "test.tsv")
    row = rows[0]
    ref = (data / "test.wrd").read_text().splitlines()[0]
    out.mkdir(parents=True, exist_ok=True)
    video = out / f"{row.id}.mp4"
    if not video.is_file():
        run_ffmpeg(["-i", resolve(root, row.video), "-i", resolve(root, row.audio), "-map", "0:v:0", "-map", "1:a:0",
                    "-c:v", "copy", "-c:a", "aac", str(video)])
    result = out / f"{row.id}.json"
    cmd = [sys.executable, "-m", "avhubert.transcribe", str(video), "--checkpoint", str(ckpt), "--beam", str(beam),
           "--output", str(result)]
    print("    $ python -m avhubert.transcribe " + " ".join(cmd[3:]), flush=True)
    run_logged(cmd, out / "transcribe.log", show=("error", "note"))
    hyp = json.loads(result.read_text())
    print(f"    REF: {ref}\n    HYP: {hyp['text']}  ({hyp['modality']})", flush=True)
    return {"id": row.id, "ref": ref, "hyp": hyp["text"]}


def prepare_pretrained(out: Path, seed: int, num_workers: int, n_clusters: int, pretrain_updates: int,
                       num_unlabelled: int = UNLABELLED_UTTERANCES, iterations: int = 1) -> Tuple[Path, "CorpusPaths", Path]:
    """Stages 1-3 (each reused when finished): corpus, MFCC clusters, pre-training (on the labelled
    training utterances plus `num_unlabelled` unlabelled ones); `iterations` > 1 repeats stages 2-3
    with clusters of the previous model's features (`iteration_overrides`). Returns (data folder,
    corpus paths, pre-trained checkpoint of the last iteration)."""
    _banner("1/7 corpus: TTS speech + mouth videos + babble noise")
    from demo.corpus import CorpusConfig, generate_corpus

    data = out / "data"
    paths = generate_corpus(data, CorpusConfig(seed=seed, num_train=LABELLED_UTTERANCES, num_unlabelled=num_unlabelled),
                            num_workers=num_workers)

    _banner("2/7 cluster: MFCC features -> k-means -> 100 Hz labels")
    labels = out / "labels"
    cluster = [sys.executable, "-m", "clustering.run_iteration", "--tsv-dir", str(paths.pretrain_dir), "--nshard", "2",
               "--valid-splits", "valid", "--num-workers", str(num_workers), "--seed", str(seed)]
    if not _done(labels / ".done"):
        run_logged([*cluster, "--out-dir", str(labels), "--feature", "mfcc", "--n-clusters", str(n_clusters),
                    "--label-ext", "mfcc"], labels / "cluster.log", show=("stage", "inertia"))
        (labels / ".done").touch()

    _banner("3/7 pretrain: masked multimodal cluster prediction")
    pre = out / "pretrain"
    pre_ckpt = pre / "checkpoints" / "checkpoint_last.pt"
    if not _done(pre / ".done"):
        hydra_train("pretrain", pre, [f"task.data={paths.pretrain_dir}", f"task.label_dir={labels}",
                                      f"optimization.max_update={pretrain_updates}", f"common.seed={seed}"])
        (pre / ".done").touch()

    for it in range(2, iterations + 1):
        _banner(f"2-3/7 iteration {it}: k-means on layer {ITERATION_LAYER} of iteration {it - 1}'s model, pre-training anew")
        labels = out / f"labels_it{it}"
        if not _done(labels / ".done"):
            run_logged([*cluster, "--out-dir", str(labels), "--feature", "avhubert", "--ckpt", str(pre_ckpt),
                        "--layer", str(ITERATION_LAYER), "--n-clusters", str(ITERATION_CLUSTERS), "--label-ext", "km",
                        "--user-dir", str(REPO / "avhubert")], labels / "cluster.log", show=("stage", "inertia"))
            (labels / ".done").touch()
        pre = out / f"pretrain_it{it}"
        pre_ckpt = pre / "checkpoints" / "checkpoint_last.pt"
        if not _done(pre / ".done"):
            hydra_train("pretrain", pre, [f"task.data={paths.pretrain_dir}", f"task.label_dir={labels}",
                                          f"optimization.max_update={pretrain_updates}", f"common.seed={seed}",
                                          *iteration_overrides()])
            (pre / ".done").touch()

    return data, paths, pre_ckpt


def iteration_overrides() -> List[str]:
    """conf/demo/pretrain.yaml's changes for iterations >= 2: `.km` labels at the video frame rate."""
    return ["task.labels=[km]", "model.label_rate=25"]


def finetune_overrides(data: Path, noise_dir: Path, pre_ckpt: Path, updates: int, seed: int) -> List[str]:
    """The demo fine-tuning's data, noise, base checkpoint and schedule (warm-up 10 %, then decay)."""
    return [f"task.data={data}", f"task.label_dir={data}", f"task.noise_wav={noise_dir}", f"model.w2v_path={pre_ckpt}",
            f"optimization.max_update={updates}", f"common.seed={seed}", f"lr_scheduler.warmup_steps={updates // 10}",
            f"lr_scheduler.decay_steps={updates - updates // 10}"]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-updates", type=int, default=400)
    p.add_argument("--unlabelled", type=int, default=UNLABELLED_UTTERANCES,
                   help="unlabelled training-speaker utterances added to the pre-training data")
    p.add_argument("--finetune-updates", type=int, default=2400)
    p.add_argument("--n-clusters", type=int, default=50)
    p.add_argument("--iterations", type=int, default=1,
                   help="pre-training iterations; >= 2 clusters the previous model's features (each adds ~3 min)")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--compare-scratch", action="store_true", help="also fine-tune from random initialisation")
    p.add_argument("--num-workers", type=int, default=2)
    a = p.parse_args(argv)
    if a.iterations < 1:
        p.error(f"--iterations must be >= 1, got {a.iterations}")
    out = Path(a.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if find_tcmalloc() is None:
        print("note: libtcmalloc_minimal not found (Debian: libtcmalloc-minimal4); training runs about 20% slower")

    data, paths, pre_ckpt = prepare_pretrained(out, a.seed, a.num_workers, a.n_clusters, a.pretrain_updates,
                                               a.unlabelled, a.iterations)

    runs = {"pretrained": (out / "finetune", False)}
    if a.compare_scratch:
        runs["scratch"] = (out / "scratch", True)
    ckpts: Dict[str, Path] = {}
    for name, (exp, scratch) in runs.items():
        _banner(f"4/7 finetune ({name}): CTC, audio-visual, babble augmentation")
        ckpts[name] = exp / "checkpoints" / "checkpoint_last.pt"
        if not _done(exp / ".done"):
            hydra_train("finetune_ctc", exp, [
                *finetune_overrides(data, paths.noise_dir, pre_ckpt, a.finetune_updates, a.seed),
                f"task.tokenizer_bpe_model={paths.spm_model}", f"model.no_pretrained_weights={str(scratch).lower()}"])
            (exp / ".done").touch()

    _banner("5/7 decode: audio / video / audio-visual x clean, 10, 5, 0, -5 dB babble")
    grids = {name: decode_grid(ckpt, data, out / "decode" / name, a.beam) for name, ckpt in ckpts.items()}

    _banner("6/7 report")
    text = write_report(out, grids, chance_wer(data), time.perf_counter() - start)
    png = plot(out, grids)
    print(text)
    print(f"\nwrote {out / 'results.md'} and {png}")

    _banner("7/7 transcribe: one test video with python -m avhubert.transcribe")
    transcribe_example(ckpts["pretrained"], data, out / "transcribe", a.beam)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # decode.log keeps the per-utterance REF/HYP lines
        handler.setLevel(logging.WARNING)
    raise SystemExit(main())

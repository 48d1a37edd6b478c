"""The README's `fairseq-hydra-train` command runs with tcmalloc without the user typing LD_PRELOAD:
the plugin re-executes the trainer once with it preloaded (avdata/fast_malloc.py)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from avdata.fast_malloc import OPT_OUT, REEXEC_MARK, find_tcmalloc, trainer_reexec_argv

needs_tcmalloc = pytest.mark.skipif(find_tcmalloc() is None, reason="libtcmalloc-minimal4 not installed (optional)")
ORIG = ["/venv/bin/python", "/venv/bin/fairseq-hydra-train", "--config-name", "tiny"]


@pytest.mark.parametrize("argv0", ["/venv/bin/fairseq-hydra-train", "fairseq-train", "/x/fairseq_cli/hydra_train.py"])
def test_trainer_entry_points_re_execute_with_the_same_command(argv0):
    assert trainer_reexec_argv([argv0, "a=1"], ORIG, {}, {}) == ORIG


@pytest.mark.parametrize(
    "argv0, env, modules",
    [
        ("/venv/bin/python", {}, {}),  # library / notebook use
        ("ipykernel_launcher.py", {}, {}),
        ("/venv/bin/fairseq-generate", {}, {}),  # not a trainer
        ("/x/other/train.py", {}, {}),  # a train.py outside fairseq_cli
        ("fairseq-hydra-train", {OPT_OUT: "1"}, {}),  # opt-out
        ("fairseq-hydra-train", {REEXEC_MARK: "1"}, {}),  # loop guard: already re-executed once
        ("fairseq-hydra-train", {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}, {}),  # preloaded by the user
        ("fairseq-hydra-train", {"PYTEST_CURRENT_TEST": "t"}, {}),  # started by a test
        ("fairseq-hydra-train", {}, {"pytest": object()}),  # inside pytest
    ],
)
def test_no_re_execution_outside_trainers_or_when_opted_out(argv0, env, modules):
    assert trainer_reexec_argv([argv0], ORIG, env, modules) is None


def _start(bin_dir, repo, data, exp, env, cwd):
    args = [
        str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/pretrain"), "--config-name", "tiny",
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={repo / 'avhubert'}",
        f"hydra.run.dir={exp}", f"checkpoint.save_dir={cwd / 'ckpt'}", "optimization.max_update=2",
        "checkpoint.save_interval_updates=0", "dataset.validate_interval=1000",
    ]
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _maps_while_running(proc: subprocess.Popen) -> bool:
    """Whether the process (the same pid across exec) ever maps libtcmalloc before it exits."""
    while proc.poll() is None:
        try:
            if "libtcmalloc" in Path(f"/proc/{proc.pid}/maps").read_text():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _env(repo, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "LD_PRELOAD", OPT_OUT, REEXEC_MARK)}
    return {**env, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", **extra}


@needs_tcmalloc
def test_readme_command_trains_with_tcmalloc(bin_dir, repo, synthetic_corpus, tmp_path):
    """Started from another directory with a relative run dir: the re-executed trainer finds the
    same paths and writes into the same run directory (Hydra's, which is also its working one)."""
    proc = _start(bin_dir, repo, synthetic_corpus, "exp", _env(repo), cwd=tmp_path)
    seen = _maps_while_running(proc)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert seen, out[-4000:]
    assert out.count("re-executing this trainer with LD_PRELOAD=") == 1
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "exp"]  # one run directory
    assert (tmp_path / "exp" / "hydra_train.log").is_file()


@needs_tcmalloc
@pytest.mark.slow
def test_opt_out_keeps_glibc_malloc(bin_dir, repo, synthetic_corpus, tmp_path):
    proc = _start(bin_dir, repo, synthetic_corpus, "exp", _env(repo, **{OPT_OUT: "1"}), cwd=tmp_path)
    seen = _maps_while_running(proc)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert not seen and "re-executing" not in out

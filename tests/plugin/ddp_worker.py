"""One rank of a 2-process CPU pre-training run through fairseq's own distributed engine.

Usage: python ddp_worker.py DATA OUT_DIR RANK WORLD PORT. Composes `conf/pretrain/tiny.yaml`,
initialises gloo over tcp://127.0.0.1 (legacy_ddp = the reference's no_c10d), trains a few
updates with fairseq's `Trainer`, and saves this rank's parameters, batch ids and the
globally reduced frame counts for the test to compare.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from fairseq import tasks, utils
from fairseq.dataclass.initialize import hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "pretrain"
NUM_UPDATES = 4


def worker(cfg, out_dir: Path) -> None:
    np.random.seed(cfg.common.seed)  # as fairseq_cli.train: same initial weights on every rank
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = trainer.get_train_iterator(epoch=1, load_dataset=False).next_epoch_itr(shuffle=True)
    records = []
    for step, sample in enumerate(itr):
        if step == NUM_UPDATES:
            break
        log = trainer.train_step([sample])
        pad = sample["net_input"]["padding_mask"]
        local_frames = int((~pad).sum()) if pad is not None else int(sample["target_list"][0].numel())
        global_frames = float(log["count_m_0"]) + float(log["count_u_0"])
        records.append({"ids": sample["id"].tolist(), "local_frames": local_frames, "global_frames": global_frames})
    rank = torch.distributed.get_rank()
    state = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}  # BN buffers stay per-rank under legacy_ddp
    torch.save({"params": state, "records": records, "world": torch.distributed.get_world_size()}, out_dir / f"rank{rank}.pt")


def main() -> None:
    data, out_dir, rank, world, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    hydra_init("tiny")
    overrides = [
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={CONF.parents[1] / 'avhubert'}",
        "dataset.max_tokens=200", "distributed_training.distributed_backend=gloo",
        f"distributed_training.distributed_world_size={world}", f"distributed_training.distributed_rank={rank}",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
        "distributed_training.distributed_no_spawn=true", "distributed_training.ddp_backend=legacy_ddp",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.1"):
        cfg = compose(config_name="tiny", overrides=overrides)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    utils.import_user_module(cfg.common)
    distributed_utils.call_main(cfg, worker, out_dir=out_dir)


if __name__ == "__main__":
    main()

"""Take one batch from fairseq's buffered (prefetching) epoch iterator, then exit (not a test module).

Usage: python prefetch_exit_worker.py DATA [--without-fix]

Right after the first batch the prefetch thread is decoding the next ones, so the interpreter exits
while it is inside OpenCV: the situation in which trainers aborted at exit. `--without-fix`
unregisters the plugin's exit hook (a negative control for `tests/plugin/test_clean_exit.py`).
"""

import atexit
import sys

from avhubert import clean_exit
from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask


def main(argv: list[str]) -> int:
    data = argv[0]
    cfg = AVHubertPretrainingConfig(data=data, label_dir=data, labels=["km"], label_rate=25, sample_rate=25,
                                    max_sample_size=500, min_sample_size=5, max_trim_sample_size=60,
                                    stack_order_audio=4, image_aug=True, random_crop=True)
    task = AVHubertPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    if "--without-fix" in argv:
        atexit.unregister(clean_exit.stop_prefetch_threads)
    batches = task.get_batch_iterator(task.dataset("train"), max_tokens=200, data_buffer_size=10, num_workers=0)
    itr = batches.next_epoch_itr(shuffle=True)
    batch = next(itr)
    print(f"first batch: {batch['net_input']['source']['video'].shape[0]} clips of {len(itr)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`preparation.cli.run_sharded_step`: the one runner of the sharded steps' command lines."""

from __future__ import annotations

import argparse

from avdata.markers import done_marker, is_done
from preparation import common
from preparation.cli import run_sharded_step


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--out-dir", required=True)
    common.add_common_args(p)
    return p


def _run(argv, seen):
    def work(args, shard):
        seen.append(list(shard))
        result = common.StepResult(processed=len(shard))
        for item in shard:
            if item == "bad":
                result.failures.add(item, "broken")
        return result

    def main(a=None):
        return run_sharded_step(a, main, "toy", _parser(), lambda a: ["a", "b", "bad", "c", "d"], work, lambda a: a.out_dir)

    return main(argv)


def test_runner_shards_finishes_and_marks(tmp_path):
    seen = []
    assert _run(["--out-dir", str(tmp_path), "--nshard", "2", "--rank", "1"], seen) == 0
    assert seen == [["c", "d"]]  # ceil(5 / 2) = 3 items per shard: shard 1 holds items 3-4
    assert is_done(done_marker(tmp_path, "toy", 1, 2))
    seen.clear()
    assert _run(["--out-dir", str(tmp_path), "--nshard", "2", "--rank", "0"], seen) == 1  # "bad" failed
    assert seen == [["a", "b", "bad"]]
    assert not is_done(done_marker(tmp_path, "toy", 0, 2))
    assert (tmp_path / "failures.toy.0_2.tsv").read_text() == "bad\tbroken\n"

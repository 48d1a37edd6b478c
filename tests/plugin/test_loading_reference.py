"""The fast loaders give the numbers of the loaders before the speed-ups (commit 8cea09d): same
decoded pixels, same seeded crops/flips, same audio features, same batches.

The reference (`tests/data/loading_reference/reference.npz`) was computed from the clips beside it
with 8cea09d's code (`make_reference.py` there says how); video is compared bit for bit (digest),
audio to 1e-6.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REF_DIR = Path(__file__).resolve().parents[1] / "data" / "loading_reference"


def _make_reference_module():
    spec = importlib.util.spec_from_file_location("make_reference", REF_DIR / "make_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("config", ["train", "valid"])
def test_items_and_batches_equal_the_frozen_reference(tmp_path, config):
    ref_mod = _make_reference_module()
    ref = np.load(REF_DIR / "reference.npz")
    got = ref_mod.outputs(ref_mod.build(ref_mod.write_corpus(tmp_path), **ref_mod.CONFIGS[config]))
    expected = {k[len(config) + 1 :]: ref[k] for k in ref.files if k.startswith(config + "_")}
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        if key.endswith("sha256"):
            means = key.replace("sha256", "means")
            np.testing.assert_allclose(got[means], expected[means], rtol=0, atol=1e-6, err_msg=f"{config} {means}")
            assert str(got[key]) == str(want), f"{config} {key}: video differs from the reference"
        elif key.endswith(("padding_mask", "target")):
            np.testing.assert_array_equal(got[key], want, err_msg=f"{config} {key}")
        else:
            np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-6, err_msg=f"{config} {key}")

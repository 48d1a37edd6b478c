"""Expected numbers (torchtune style): the tiny pre-training model with closed-form weights
(`tests/fixed_init.py`) on a fixed batch gives recorded logits, feature penalty, loss and logging
outputs; and the criterion's arithmetic equals the reference's formulas on hand-made logits.

The model numbers are regression values recorded with this implementation; they pin the whole
training forward (input masking with `mask_emb`, both front-ends with batch-statistics BatchNorm,
fusion, transformer, cosine logits, label alignment). Nothing in the forward draws random numbers
(masks and modality-drop decisions are injected), so other code using torch's RNG cannot move them.
"""

import math
from types import SimpleNamespace
from typing import Any, Dict

import pytest
import torch
from fairseq import metrics

from avhubert.criterion import AVHubertCriterion
from tests.fixed_init import assert_summary, fixed_init_, fixed_tensor
from tests.plugin.tiny_model import tiny_model

B, T = 3, 20


def fixed_batch() -> Dict[str, Any]:
    """A 3 x 20-frame unpadded batch; audio masked at fixed spans (15 frames), video unmasked."""
    mask_audio = torch.zeros(B, T, dtype=torch.bool)
    mask_audio[0, 2:7] = mask_audio[1, 9:14] = mask_audio[2, 0:3] = mask_audio[2, 15:17] = True
    net_input = {
        "source": {"audio": fixed_tensor((B, 104, T), 0.3), "video": fixed_tensor((B, 1, T, 88, 88), 1.3)},
        "padding_mask": torch.zeros(B, T, dtype=torch.bool),
        "mask_audio": mask_audio,
        "mask_video": torch.zeros(B, T, dtype=torch.bool),
        "modality_drop": "none",
    }
    targets = [(torch.arange(B * T).reshape(B, T) * 5 // 3) % 8 + 4]  # symbols 4..11 of the 12-entry dictionary
    return {"net_input": net_input, "target_list": targets, "id": torch.arange(B)}


EXPECTED_LOGITS = {
    "m": {"mean": 0.07131261734498871, "std": 0.5344114259107736, "abs_sum": 89.88045521080494,
          "weighted": -5.1225696043665705, "x[0]": 0.6497315764427185, "x[59]": -0.27529168128967285,
          "x[119]": -0.2927709221839905, "x[179]": -0.25708767771720886},
    "u": {"mean": 0.06762071149768653, "std": 0.49187596981031273, "abs_sum": 248.193525955081,
          "weighted": -1.0817842858928277, "x[0]": 0.5755418539047241, "x[179]": -0.24046669900417328,
          "x[359]": -0.23463577032089233, "x[539]": -0.23644068837165833},
}
EXPECTED_FEATURES_PEN = 0.03230496495962143
# criterion av_hubert with pred_masked_weight 1, pred_nomask_weight 0.5, loss_weights [10]
EXPECTED_LOG = {"loss": 116.15643310546875, "ntokens": 60, "nsentences": 3, "sample_size": 60,
                "loss_m_0": 39.51216125488281, "loss_u_0": 114.5225830078125, "loss_features_pen": 19.382980346679688,
                "correct_m_0": 0, "count_m_0": 15, "correct_u_0": 7, "count_u_0": 45}
# eval-mode extract_features of the same model and input (running-statistics BatchNorm, no masking)
EXPECTED_EVAL_FEATURES = {"mean": -0.01911969775264879, "std": 1.0152887669647983, "abs_sum": 1729.4614116178127,
                          "weighted": 1.7636957166840836, "x[0]": 1.0109187364578247, "x[639]": 0.4362131655216217,
                          "x[1279]": 0.4513457715511322, "x[1919]": 0.41647887229919434}


def fixed_model() -> torch.nn.Module:
    return fixed_init_(tiny_model()).train()


def test_pretraining_forward_gives_recorded_numbers():
    batch = fixed_batch()
    out = fixed_model()(target_list=batch["target_list"], **batch["net_input"])
    assert out["logit_m_list"][0].shape == (15, 12) and out["logit_u_list"][0].shape == (45, 12)
    masked = batch["net_input"]["mask_audio"]
    assert torch.equal(out["target_m_list"][0], batch["target_list"][0][masked])
    assert torch.equal(out["target_u_list"][0], batch["target_list"][0][~masked])
    assert_summary(out["logit_m_list"][0], EXPECTED_LOGITS["m"])
    assert_summary(out["logit_u_list"][0], EXPECTED_LOGITS["u"])
    assert out["features_pen"].item() == pytest.approx(EXPECTED_FEATURES_PEN, rel=1e-4)


def test_eval_features_give_recorded_numbers():
    batch = fixed_batch()
    with torch.no_grad():
        x, _ = fixed_model().eval().extract_features(batch["net_input"]["source"], None)
    assert x.shape == (B, T, 32)
    assert_summary(x, EXPECTED_EVAL_FEATURES)


def test_criterion_on_fixed_model_gives_recorded_loss_and_logging_outputs():
    crit = AVHubertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0])
    loss, sample_size, log = crit(fixed_model(), fixed_batch())
    assert sample_size == 60
    assert loss.item() == pytest.approx(EXPECTED_LOG["loss"], rel=1e-4)
    assert set(log) == set(EXPECTED_LOG)
    for key, want in EXPECTED_LOG.items():
        assert float(log[key]) == pytest.approx(want, rel=1e-4, abs=1e-6), key


class _StubModel(torch.nn.Module):
    """Returns a fixed pre-training net output (the criterion only reads these keys)."""

    def __init__(self, net_output: Dict[str, Any]) -> None:
        super().__init__()
        self.net_output = net_output

    def forward(self, **kwargs: Any) -> Dict[str, Any]:
        return self.net_output

    def get_extra_losses(self, net_output: Dict[str, Any]):
        return [net_output["features_pen"]], ["features_pen"]


def _ce_sum(rows, targets) -> float:
    """Cross-entropy (sum) written out: log(sum exp) - logit[target], in float64."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(rows, targets))


@pytest.mark.parametrize("nomask_weight", [0.0, 1.0])
def test_criterion_arithmetic_equals_the_reference_formulas(nomask_weight):
    """Spec 3.6: CE sums weighted per set; sample_size counts masked (+ unmasked if weighted) targets;
    extra loss = features_pen x 10 x sample_size; reduced metrics are per sample_size in base 2."""
    logit_m, tgt_m = [[2.0, 0.0, -1.0], [0.5, 1.5, 3.0], [0.0, 0.0, 0.0]], [0, 1, 2]
    logit_u, tgt_u = [[1.0, -2.0, 0.5], [-1.0, 4.0, 0.0]], [0, 1]
    pen = 0.25
    net_output = {"logit_m_list": [torch.tensor(logit_m)], "target_m_list": [torch.tensor(tgt_m)],
                  "logit_u_list": [torch.tensor(logit_u)], "target_u_list": [torch.tensor(tgt_u)],
                  "features_pen": torch.tensor(pen), "padding_mask": None}
    crit = AVHubertCriterion(SimpleNamespace(), pred_masked_weight=1.0, pred_nomask_weight=nomask_weight, loss_weights=[10.0])
    loss, sample_size, log = crit(_StubModel(net_output), {"net_input": {}, "target_list": None, "id": torch.arange(4)})
    ce_m, ce_u = _ce_sum(logit_m, tgt_m), _ce_sum(logit_u, tgt_u)
    want_size = 3 + (2 if nomask_weight > 0 else 0)
    want_pen = 10 * pen * want_size
    want_loss = ce_m + nomask_weight * ce_u + want_pen
    assert sample_size == want_size and int(log["sample_size"]) == int(log["ntokens"]) == want_size
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert float(log["loss"]) == pytest.approx(want_loss, rel=1e-6)
    assert float(log["loss_m_0"]) == pytest.approx(ce_m, rel=1e-6)
    assert float(log["loss_u_0"]) == pytest.approx(ce_u, rel=1e-6)  # logged even when not weighted
    assert float(log["loss_features_pen"]) == pytest.approx(want_pen, rel=1e-6)
    assert int(log["nsentences"]) == 4
    # argmax hits: masked rows 0 (2.0 at 0: yes), 1 (3.0 at 2, target 1: no), 2 (tie -> index 0, target 2: no)
    assert (int(log["correct_m_0"]), int(log["count_m_0"]), int(log["correct_u_0"]), int(log["count_u_0"])) == (1, 3, 2, 2)
    with metrics.aggregate() as agg:
        AVHubertCriterion.reduce_metrics([log, log])  # two workers' outputs are summed
    got = agg.get_smoothed_values()
    ln2 = math.log(2)
    assert got["loss"] == pytest.approx(want_loss / want_size / ln2, abs=1e-3)
    assert got["loss_m_0"] == pytest.approx(ce_m / want_size / ln2, abs=1e-3)
    assert got["loss_features_pen"] == pytest.approx(want_pen / want_size / ln2, abs=1e-3)
    assert got["correct_m_0"] == pytest.approx(1 / 3, abs=1e-6) and got["correct_u_0"] == pytest.approx(1.0)
    assert got["count_m_0"] == 6

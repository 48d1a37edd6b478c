"""The registration table in `avhubert/__init__.py` names every registered component and its file;
criteria register once, through a visible decorator that tolerates a second import of the plugin."""

import re
from typing import List, Tuple

import pytest
from fairseq.criterions import CRITERION_REGISTRY, FairseqCriterion
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import avhubert
from avhubert.registration import register_criterion_once

REGISTRIES = {"task": TASK_REGISTRY, "model": MODEL_REGISTRY, "criterion": CRITERION_REGISTRY}


def _table() -> List[Tuple[str, str, str, str]]:
    rows = re.findall(r"^(\w+)\s+(task|model|criterion)\s+(\w+)\s+(\w+)\.py\b", avhubert.__doc__, flags=re.M)
    assert rows, "avhubert/__init__.py lost its registration table"
    return rows


def test_table_matches_the_registries():
    listed = set()
    for name, kind, cls_name, module in _table():
        cls = REGISTRIES[kind][name]
        assert (cls.__module__, cls.__name__) == (f"avhubert.{module}", cls_name), (kind, name)
        listed.add((kind, name))
    ours = {(kind, name) for kind, reg in REGISTRIES.items() for name, cls in reg.items()
            if cls.__module__.startswith("avhubert.")}
    assert ours == listed  # nothing registered that the table does not list


def test_same_criterion_class_again_is_skipped_and_a_clash_is_refused():
    registered = CRITERION_REGISTRY["av_hubert"]

    class AVHubertCriterion(FairseqCriterion):  # what a second import under another module path defines
        pass

    assert register_criterion_once("av_hubert")(AVHubertCriterion) is AVHubertCriterion
    assert CRITERION_REGISTRY["av_hubert"] is registered

    class SomethingElse(FairseqCriterion):
        pass

    with pytest.raises(ValueError, match=r"'av_hubert' is already registered by avhubert.criterion.AVHubertCriterion"):
        register_criterion_once("av_hubert")(SomethingElse)

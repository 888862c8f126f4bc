"""fastdeit.text.did_you_mean: the suggestion of an unknown-name error."""

from __future__ import annotations

import difflib

from fastdeit.models import list_models
from fastdeit.models.convnet import list_convnets
from fastdeit.text import did_you_mean


def test_a_typo_in_a_prefix_suggests_the_names_with_that_prefix():
    known = list_models() + list_convnets()
    assert difflib.get_close_matches("deit_tinny", known, n=1) == ["convnet_tiny"]  # what the messages said before
    hint = did_you_mean("deit_tinny", known)
    assert hint == "; did you mean deit_tiny_distilled_patch16_224, deit_tiny_patch16_224, convnet_tiny?"


def test_whole_names_and_nothing_close():
    assert did_you_mean("lrr", ["lr", "min_lr", "seed"]) == "; did you mean lr?"
    assert did_you_mean("convnet_smal", ["convnet_tiny", "convnet_small"], n=1) == "; did you mean convnet_small?"
    assert did_you_mean("zzzz", ["lr", "seed"]) == ""

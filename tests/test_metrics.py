"""Metric definitions checked on cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exaone_edge.metrics import anls, exact_match, levenshtein, logit_fidelity


def test_identical_logits_have_zero_kl_and_full_agreement():
    logits = np.random.default_rng(0).normal(size=(7, 50))
    result = logit_fidelity(logits, logits, targets=np.arange(7))
    assert result.kl_mean == pytest.approx(0.0, abs=1e-12)
    assert result.top1_agreement == 1.0 and result.ppl_ratio == pytest.approx(1.0)


def test_kl_matches_a_hand_computed_case():
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    result = logit_fidelity(p, q)
    assert result.kl_mean == pytest.approx(expected)
    assert result.top1_agreement == 1.0  # a tie resolves to index 0 in both


def test_noise_raises_kl_and_lowers_agreement():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 100)) * 3
    small = logit_fidelity(logits, logits + rng.normal(scale=0.05, size=logits.shape))
    large = logit_fidelity(logits, logits + rng.normal(scale=1.0, size=logits.shape))
    assert small.kl_mean < large.kl_mean and small.top1_agreement > large.top1_agreement


def test_anls_and_exact_match():
    assert levenshtein("kitten", "sitting") == 3
    assert anls("18,232.50", ["18,232.50"]) == 1.0
    assert anls("18,232.5", ["18,232.50"]) == pytest.approx(1 - 1 / 9)
    assert anls("완전히 다른 답", ["1,823,250원"]) == 0.0  # below the 0.5 threshold
    assert exact_match(" Total  Due. ", ["total due"]) and not exact_match("18,232", ["18,232.50"])
    assert exact_match("１８２３", ["1823"])  # full-width digits fold

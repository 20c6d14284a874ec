"""The two Bayesian FDR rules: the local rule calls only effects that are each likely real."""

from __future__ import annotations

import numpy as np
import pytest

from pertpyro.causal import bayesian_fdr_calls


def test_local_rule_leaves_out_the_borderline_effects_the_set_rule_pads_with():
    rng = np.random.default_rng(0)
    real = rng.uniform(0.97, 1.0, 200)  # clear effects
    borderline = rng.uniform(0.3, 0.7, 400)  # overconfident probabilities of null effects near the threshold
    p = np.concatenate([real, borderline])
    truth = np.arange(p.size) < real.size
    for fdr in (0.05, 0.1):
        local, qvalue = bayesian_fdr_calls(p, fdr)
        padded, _ = bayesian_fdr_calls(p, fdr, rule="set")
        realised_set = (padded & ~truth).sum() / padded.sum()
        assert realised_set > 1.5 * fdr  # the set rule's promise rests on the borderline probabilities
        assert local.sum() == truth.sum()  # the local rule calls exactly the clear effects
        assert not (local & ~truth).any()
        assert (padded >= local).all()  # a prefix of the same order
        assert qvalue[local].max() <= fdr


def test_local_rule_calls_by_each_probability():
    p = np.array([0.99, 0.95, 0.91, 0.89, 0.2])
    called, _ = bayesian_fdr_calls(p, 0.1)
    np.testing.assert_array_equal(called, [True, True, True, False, False])
    with pytest.raises(ValueError, match="rule must be one of"):
        bayesian_fdr_calls(p, 0.1, rule="mean")

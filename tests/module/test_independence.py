"""The penalty on the dependence of ``z_basal`` on the perturbation: what it measures, and when it is in the model."""

import pytest
import torch
from pyro import poutine

from pertpyro.module._independence import basal_dependence
from pertpyro.module._program import PerturbationProgram
from pertpyro.module.sites import INDEPENDENCE


def _cells(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    z = torch.randn(400, 3)
    d = torch.zeros(400, 1)
    d[200:, 0] = 1.0
    z[200:, 0] += shift
    return z, d


def test_penalty_grows_with_the_gap_and_ignores_the_scale():
    z, d = _cells(1.0)
    penalty = basal_dependence(z, d)
    assert torch.all(penalty[:200] == 0)  # controls pay nothing
    # a gap of one prior sd in one dimension, measured in the pooled spread (sqrt(1 + 1/4)): about 0.5 / 1.25
    assert penalty[200:].mean().item() == pytest.approx(0.4, abs=0.08)
    assert torch.allclose(basal_dependence(3.0 * z, d), penalty, atol=1e-5)  # shrinking z does not lower it
    null = basal_dependence(*_cells(0.0))
    assert null[200:].mean().item() < 0.05


def test_penalty_is_zero_without_controls():
    z, d = _cells(1.0)
    assert torch.all(basal_dependence(z[200:], d[200:]) == 0)


def test_factor_only_while_training():
    program = PerturbationProgram(6, 1, 1, 3, n_hidden=0, efficacy=False, independence=10.0)
    z, d = _cells(1.0)
    args = (
        torch.ones(400, 6),
        d,
        torch.zeros(400, dtype=torch.long),
        torch.full((400,), 6.0),
        torch.arange(400),
        400,
    )
    trace = poutine.trace(poutine.condition(program, data={"z_basal": z})).get_trace(*args)
    factor = trace.nodes[INDEPENDENCE]["fn"].log_prob(trace.nodes[INDEPENDENCE]["value"])
    assert torch.allclose(factor, -10.0 * basal_dependence(z, d))
    program.eval()
    assert INDEPENDENCE not in poutine.trace(program).get_trace(*args).nodes
    program.train()
    with torch.no_grad():
        assert INDEPENDENCE not in poutine.trace(program).get_trace(*args).nodes


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="independence"):
        PerturbationProgram(6, 1, 1, 2, independence=-1.0)

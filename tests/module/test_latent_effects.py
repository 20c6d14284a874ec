"""``latent_effects``: a per-target shift of the decoder's input, recovered by the ATE, addressable by ``do``."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine

import pertpyro
from pertpyro._settings import local_params
from pertpyro.module._program import PerturbationGuide, PerturbationProgram
from pertpyro.module.sites import COUNTS, EFFECT, LATENT_EFFECT, PERTURBATION, Z_BASAL

N_GENES = 30
LATENT_SHIFT = -2.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _switch_screen(n_per_arm: int, seed: int) -> tuple[ad.AnnData, np.ndarray]:
    """Cells on one switch-like program ``sigmoid(3 z)``; knockout ``A`` moves ``z`` by ``LATENT_SHIFT``.

    Returns the registered screen and the true shift of mean ``log1p(1e4 x / sum x)`` (40,000 cells per arm).
    """
    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, 1.0, N_GENES)
    loading = np.zeros(N_GENES)
    loading[:12] = rng.choice([-2.5, 2.5], 12)

    def cells(n: int, shift: float) -> np.ndarray:
        z = rng.normal(0.0, 1.0, n) + shift
        logits = bias + loading * (1.0 / (1.0 + np.exp(-3.0 * z)))[:, None]
        share = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        mean = share * rng.lognormal(np.log(2000.0), 0.2, n)[:, None]
        return rng.negative_binomial(10, 10.0 / (10.0 + mean)).astype(np.float32)

    counts = np.vstack([cells(n_per_arm, 0.0), cells(n_per_arm, LATENT_SHIFT)])
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i}" for i in range(counts.shape[0])]
    adata.var_names = [f"g{j}" for j in range(N_GENES)]
    adata.obs["perturbation"] = ["control"] * n_per_arm + ["A"] * n_per_arm
    pertpyro.setup_anndata(adata)

    def log_normalised(x: np.ndarray) -> np.ndarray:
        return np.log1p(1e4 * x / x.sum(1, keepdims=True)).mean(0)

    return adata, log_normalised(cells(40_000, LATENT_SHIFT)) - log_normalised(cells(40_000, 0.0))


def test_ate_recovers_a_latent_shift_that_gene_effects_lose():
    """Gene-only effects let the knocked-out cells' basal states absorb the shift; the latent effect carries it."""
    adata, truth = _switch_screen(150, seed=0)
    errors, slopes = {}, {}
    for latent in (False, True):
        model = pertpyro.PerturbationModel(
            adata, latent_dim=2, n_hidden=32, efficacy=False, latent_effects=latent, seed=0
        )
        model.train(max_epochs=30, batch_size=60, lr=0.03, early_stopping=False, progress_bar=False, seed=0)
        predicted = model.ate(["A"], n_samples=10)["mean"].to_numpy()
        errors[latent] = float(np.abs(predicted - truth).mean())
        slopes[latent] = float(np.polyfit(truth, predicted, 1)[0])
    assert errors[True] < 0.3
    assert slopes[True] > 0.6
    assert errors[True] < errors[False] - 0.1


def _program_args(n: int, targets: torch.Tensor) -> tuple:
    counts = torch.ones(n, 6)
    return counts, targets, torch.zeros(n, dtype=torch.long), torch.full((n,), 6.0), torch.arange(n), n


def test_do_sets_the_latent_shift_and_the_perturbation_carries_it():
    torch.manual_seed(0)
    program = PerturbationProgram(6, 2, 1, 3, n_hidden=8, sparse_effects=False, efficacy=False, latent_effects=True)
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    z, effect, shift = torch.randn(3, 3), 0.1 * torch.randn(2, 6), torch.randn(2, 3)
    conditioned = poutine.condition(program, data={Z_BASAL: z, EFFECT: effect})

    def means(action: dict) -> torch.Tensor:
        trace = poutine.trace(poutine.do(conditioned, data=action)).get_trace(*_program_args(3, d))
        assert trace.nodes[LATENT_EFFECT]["scale"] == 1.0  # a global site
        return trace.nodes[COUNTS]["fn"].mean

    batch = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        got = means({LATENT_EFFECT: shift})
        expected = 6.0 * torch.softmax(program.decoder(z + d @ shift, batch) + d @ effect, -1)
        torch.testing.assert_close(got, expected)
        # do(perturbation=control) drops the latent part with the gene part: the decoder reads z_basal itself
        control = means({LATENT_EFFECT: shift, PERTURBATION: torch.zeros(3, 2)})
        torch.testing.assert_close(control, 6.0 * torch.softmax(program.decoder(z, batch), -1))


def test_guide_reads_the_basal_state_without_the_targets_latent_shift():
    torch.manual_seed(0)
    program = PerturbationProgram(6, 2, 1, 3, n_hidden=8, sparse_effects=False, efficacy=False, latent_effects=True)
    guide = PerturbationGuide(program, 1, n_hidden=8)
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    shift = torch.randn(2, 3)
    args = _program_args(3, d)
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(guide, data={LATENT_EFFECT: shift})).get_trace(*args)
        loc, _ = guide.encoder(args[0], args[2], d)
    torch.testing.assert_close(trace.nodes[Z_BASAL]["fn"].base_dist.loc, loc - d @ shift)
    with torch.no_grad():  # the posterior mean of z_basal (get_latent_representation): less the mean shift
        torch.testing.assert_close(guide.basal_mean(args[0], args[2], d), loc - d @ guide.latent_effect_loc)


def test_save_load_round_trip_and_table_estimator(tiny_adata, tmp_path):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, latent_effects=True)
    before = model.guide.latent_effect_loc.detach().clone()
    model.train(max_epochs=3, batch_size=64, progress_bar=False, sparse_targets=True)
    assert not torch.equal(model.guide.latent_effect_loc, before)  # trained, on the sparse-target path too
    labels = ["A", "A+B"]
    ate = model.ate(labels, n_samples=3, estimator="analytic")
    # the table estimator reads effects as logit offsets; with a latent shift it answers analytically instead
    assert np.allclose(model.ate(labels, n_samples=3, estimator="table")["mean"], ate["mean"])
    model.save(tmp_path / "latent")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "latent", tiny_adata)
    assert loaded.program.latent_effects
    assert np.allclose(loaded.ate(labels, n_samples=3, estimator="analytic")["mean"], ate["mean"])


def test_latent_effects_refused_with_the_grn_block():
    with pytest.raises(ValueError, match="latent_effects"), local_params():
        PerturbationProgram(6, 2, 1, 3, grn=object(), latent_effects=True)  # type: ignore[arg-type]

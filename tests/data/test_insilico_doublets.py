"""In-silico doublets of real cells: sums of two cells' counts, partner types, truth in obs, bad inputs."""

import numpy as np
import pytest

import pertpyro
from pertpyro.data import add_doublets


@pytest.fixture(scope="module")
def screen():
    return pertpyro.datasets.simulate(n_cells=300, n_genes=20, n_targets=3, n_combinations=0, n_truth_cells=0, seed=1)


def test_doublets_are_sums_of_two_real_cells(screen):
    before = screen.X.copy()
    out = add_doublets(screen, 0.1, seed=0)
    assert (screen.X != before).nnz == 0  # the input is left as it was
    kind = out.obs["artifact_type"].to_numpy()
    rows = np.flatnonzero(kind == "doublet")
    assert len(rows) == 30
    assert set(kind) == {"none", "doublet"}
    partner = screen.obs_names.get_indexer(out.obs["doublet_partner"].to_numpy()[rows])
    assert np.all(partner >= 0)
    assert np.all(partner != rows)
    assert abs(out.X[rows] - (screen.X[rows] + screen.X[partner])).sum() == 0
    singlets = np.flatnonzero(kind == "none")
    assert abs(out.X[singlets] - screen.X[singlets]).sum() == 0
    assert (out.layers["clean_counts"] != screen.X).nnz == 0
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    same = labels[rows] == labels[partner]
    assert np.array_equal(out.obs["doublet_type"].to_numpy()[rows] == "homotypic", same)
    assert np.array_equal(out.obs["perturbation"].to_numpy(), screen.obs["perturbation"].to_numpy())
    assert (add_doublets(screen, 0.1, seed=0).X != out.X).nnz == 0  # deterministic under seed


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_homotypic_fraction_sets_the_partner_labels(screen, fraction):
    out = add_doublets(screen, 0.2, homotypic_fraction=fraction, seed=2)
    rows = np.flatnonzero(out.obs["artifact_type"].to_numpy() == "doublet")
    partner = screen.obs_names.get_indexer(out.obs["doublet_partner"].to_numpy()[rows])
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    assert np.all((labels[rows] == labels[partner]) == bool(fraction))
    expected = "homotypic" if fraction else "heterotypic"
    assert set(out.obs["doublet_type"].to_numpy()[rows]) == {expected}


def test_bad_doublet_inputs(screen):
    with pytest.raises(ValueError, match="doublet_rate"):
        add_doublets(screen, 0.6)
    with pytest.raises(ValueError, match="homotypic_fraction"):
        add_doublets(screen, 0.1, homotypic_fraction=1.5)
    with pytest.raises(ValueError, match="no column 'guide'"):
        add_doublets(screen, 0.1, perturbation_key="guide")
    one_label = screen.copy()
    one_label.obs["perturbation"] = "control"
    with pytest.raises(ValueError, match="no heterotypic partner"):
        add_doublets(one_label, 0.1, homotypic_fraction=0.0)

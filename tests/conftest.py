"""Shared fixtures: every test starts from a seeded RNG, Pyro validation on, and an empty param store."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro
import pytest
import torch

from pertpyro._settings import set_seed


@pytest.fixture(autouse=True)
def _seeded_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    set_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()

"""Datasets: the shipped Papalexi 2021 screen, the CollecTRI network, the ground-truth simulator."""

from pertpyro.data._datasets import collectri, papalexi2021
from pertpyro.data._public import adamson2016, norman2019, replogle2022, to_contract
from pertpyro.data._simulate import simulate, truth_shift_frame

__all__ = [
    "adamson2016",
    "collectri",
    "norman2019",
    "papalexi2021",
    "replogle2022",
    "simulate",
    "to_contract",
    "truth_shift_frame",
]

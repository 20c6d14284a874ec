"""Datasets: the shipped Papalexi 2021 screen, the CollecTRI network, the ground-truth simulator."""

from pertpyro.data._datasets import collectri, papalexi2021

__all__ = ["collectri", "papalexi2021"]

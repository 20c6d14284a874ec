"""pertpyro: Bayesian generative models for single-cell CRISPR perturbation screens, in Pyro."""

__version__ = "0.1.0"

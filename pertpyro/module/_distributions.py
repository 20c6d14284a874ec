"""Count distributions parameterised the way the decoder produces them (log means), cheap to enumerate over."""

from __future__ import annotations

import math

import torch
from pyro.distributions import Bernoulli, StudentT, TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

_EMPTY = torch.Size()


class NegativeBinomialLogMean(TorchDistribution):
    """Negative binomial with log mean ``log_mean`` and log inverse-dispersion ``log_theta``.

    ``Var[x] = mu + mu**2 / theta``. The log-gamma terms depend only on the counts and ``theta``, so when the
    mean carries extra (e.g. enumerated) batch dimensions they are computed once at the counts' shape.

    Parameters
    ----------
    log_mean
        Log of the mean, any shape broadcastable with ``log_theta``.
    log_theta
        Log of the inverse dispersion ``theta``.
    """

    arg_constraints = {"log_mean": constraints.real, "log_theta": constraints.real}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, log_mean: torch.Tensor, log_theta: torch.Tensor, validate_args: bool | None = None) -> None:
        self.log_mean, self.log_theta = log_mean, log_theta
        batch_shape = torch.broadcast_shapes(log_mean.shape, log_theta.shape)
        super().__init__(batch_shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.log_mean.exp().expand(self.batch_shape)

    @property
    def variance(self) -> torch.Tensor:
        mu = self.mean
        return mu + mu**2 / self.log_theta.exp()

    def expand(self, batch_shape: torch.Size, _instance: NegativeBinomialLogMean | None = None):
        new = self._get_checked_instance(NegativeBinomialLogMean, _instance)
        # Parameters stay at their own shapes (broadcast happens in log_prob), so an expansion by Pyro's plates
        # does not multiply the log-gamma work.
        new.log_mean, new.log_theta = self.log_mean, self.log_theta
        super(NegativeBinomialLogMean, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        theta = self.log_theta.exp()
        normaliser = torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1.0)  # counts' shape
        log_total = torch.logaddexp(self.log_theta, self.log_mean)
        out = normaliser + theta * (self.log_theta - log_total) + value * (self.log_mean - log_total)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            log_mean, log_theta = broadcast_all(self.log_mean, self.log_theta)
            theta = log_theta.exp().expand(shape)
            rate = torch._standard_gamma(theta) * (log_mean - log_theta).exp().expand(shape)
            return torch.poisson(rate)


class SharedScaleStudentT(TorchDistribution):
    """Student-t with a fixed number of degrees of freedom, location ``loc`` and scale ``scale``.

    The effect prior: one scale per gene, shared by every target. Expanded to the ``(targets, genes)`` plates, the
    parameters keep their own shapes and only the result of :meth:`log_prob` is broadcast, so the normalising
    constant (a log-gamma of ``df`` and ``log scale``) is computed once per gene instead of once per target and gene,
    and the constant of ``df`` once in Python. Values are those of ``torch.distributions.StudentT``.

    Parameters
    ----------
    df
        Degrees of freedom (a positive number).
    loc
        Location.
    scale
        Scale (positive), broadcastable with ``loc``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, df: float, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        if not df > 0:
            raise ValueError(f"df must be positive, got {df}.")
        self.df, self.loc, self.scale = float(df), loc, scale
        self._log_norm = (
            0.5 * math.log(self.df * math.pi) + math.lgamma(0.5 * self.df) - math.lgamma(0.5 * (self.df + 1))
        )
        super().__init__(torch.broadcast_shapes(loc.shape, scale.shape), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: SharedScaleStudentT | None = None):
        new = self._get_checked_instance(SharedScaleStudentT, _instance)
        new.df, new.loc, new.scale, new._log_norm = self.df, self.loc, self.scale, self._log_norm
        super(SharedScaleStudentT, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _full(self) -> StudentT:
        df = torch.full((), self.df, dtype=self.scale.dtype, device=self.scale.device)
        return StudentT(df, self.loc, self.scale).expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._full().mean

    @property
    def variance(self) -> torch.Tensor:
        return self._full().variance

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        return self._full().rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        y = (value - self.loc) / self.scale
        out = -0.5 * (self.df + 1.0) * torch.log1p(y * y / self.df) - (self.scale.log() + self._log_norm)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))


class MarkedBernoulli(Bernoulli):
    """Bernoulli whose enumerated support says so: the value Pyro's enumeration hands back is ``[0, 1]``.

    Under ``TraceEnum_ELBO`` the value of an enumerated site is a reshaped ``enumerate_support(expand=False)``;
    this class tags that tensor with the attribute :class:`pyro.distributions.Categorical` uses (Pyro's
    enumeration keeps it through its reshape; plates may hand the site an expanded copy of the distribution, so
    the tag is a constant rather than the instance's id), and a model can test :func:`is_enumerated_support` to
    build the two arms by stacking instead of a per-element select.
    """

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        values = super().enumerate_support(expand=expand)
        if not expand:
            values._pyro_categorical_support = _BINARY_SUPPORT
        return values

    def expand(self, batch_shape: torch.Size, _instance: MarkedBernoulli | None = None) -> MarkedBernoulli:
        new = self._get_checked_instance(MarkedBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)


_BINARY_SUPPORT = "pertpyro.binary_support"


def is_enumerated_support(value: torch.Tensor) -> bool:
    """Whether ``value`` is a :class:`MarkedBernoulli`'s enumerated support ``[0, 1]`` (along its leading dim)."""
    return getattr(value, "_pyro_categorical_support", None) == _BINARY_SUPPORT


class PresentColumnsBernoulli(TorchDistribution):
    """Independent Bernoulli columns of which only some are carried; the others are known to be 0.

    The ``perturbation`` site of a step that reads only the targets present in its minibatch: the value holds the
    present columns, and ``log_prob`` adds the log-probability that every absent column is 0, so the density is the
    one of the full multi-hot row.

    Parameters
    ----------
    probs
        Probabilities of the present columns, ``(P,)``.
    absent_log_prob
        ``sum log(1 - p_t)`` over the absent columns (a scalar).
    batch_shape
        Batch shape (the cells).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, probs: torch.Tensor, absent_log_prob: torch.Tensor, batch_shape: torch.Size) -> None:
        self.base = Bernoulli(probs=probs).expand(torch.Size(batch_shape) + probs.shape[-1:]).to_event(1)
        self.absent_log_prob = absent_log_prob
        super().__init__(self.base.batch_shape, self.base.event_shape, validate_args=False)

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value) + self.absent_log_prob

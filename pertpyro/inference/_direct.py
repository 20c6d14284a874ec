"""Plain attribute reads of a PyroModule's parameters for the duration of a training step.

A :class:`pyro.nn.PyroModule` turns every read of an ``nn.Parameter`` attribute (``self.weight`` in each
``Linear``, ``self.log_theta`` in the model, ...) into a ``pyro.param`` statement that travels through the whole
stack of Pyro handlers (trace, replay, enumeration, the plates), and every read of a buffer into two extra Python
frames. With module-local parameters (``pertpyro._settings.local_params``) these statements store nothing: they
only let handlers see the parameters. The training step optimises the modules' parameters directly with torch and
its ELBO reads only sample sites, so it needs none of them.

:func:`direct_attributes` puts each parameter and buffer tensor into its module's instance ``__dict__`` for the
duration of a ``with`` block, so Python finds it there without calling ``PyroModule.__getattr__``: the same tensors
(same values, same autograd graph), no ``pyro.param`` statements. Outside the block nothing changes, so ``SVI``
with Pyro's global param store, ``Predictive`` and the queries see the usual ``pyro.param`` statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyro.nn import PyroModule
from torch import nn


@contextmanager
def direct_attributes(*modules: object) -> Iterator[None]:
    """Read the parameters and buffers of every ``PyroModule`` under ``modules`` as plain attributes.

    Parameters
    ----------
    modules
        Root modules (e.g. the program and the guide); all their ``PyroModule`` submodules are covered. Arguments that
        are not ``nn.Module``s (a guide written as a plain function) are left alone.

    Notes
    -----
    For a block that reads the modules, such as one loss evaluation: inside it, parameters and buffers must not be
    re-assigned (``module.weight = ...``; in-place updates are fine), as reads would still see the entry put into
    ``__dict__``. Nested use is allowed (an inner block leaves an outer one's entries alone). The entries are removed
    on exit, also after an exception.
    """
    bound: list[tuple[nn.Module, list[str]]] = []
    try:
        for root in modules:
            for module in root.modules() if isinstance(root, nn.Module) else ():
                if not isinstance(module, PyroModule):
                    continue
                attributes = module.__dict__
                names = []
                for table in (module._parameters, module._buffers):
                    for name, value in table.items():
                        if value is not None and name not in attributes:
                            attributes[name] = value
                            names.append(name)
                bound.append((module, names))
        yield
    finally:
        for module, names in bound:
            for name in names:
                module.__dict__.pop(name, None)

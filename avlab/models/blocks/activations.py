"""Activation factory shared by every task's models.

Configs name activations by string (Table 2 of Attentive AV-FusionNet searches over
``GELU`` and ``ReLU``), so one place maps names to modules and rejects typos early with a hint.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from avlab.errors import did_you_mean

__all__ = ["ACTIVATIONS", "make_activation"]

# Factories rather than instances: every call must return a fresh module so that two layers
# never share one (stateless today, but e.g. PReLU would not be).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name`` (case-insensitive).

    Valid names: ``gelu``, ``relu``, ``tanh``, ``silu``, ``sigmoid``, ``identity``.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and the closest one.
    """
    if not isinstance(name, str):
        raise ValueError(  # noqa: TRY004 - config errors are ValueErrors throughout
            f"activation must be a string, one of {sorted(ACTIVATIONS)}; found {name!r}"
        )
    key = name.strip().lower()
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; valid names are {', '.join(sorted(ACTIVATIONS))}."
            + did_you_mean(key, ACTIVATIONS)
        )
    return ACTIVATIONS[key]()

"""Multi-layer perceptron heads shared by the tasks' models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from avlab.models.blocks.activations import make_activation

__all__ = ["MLPHead"]


def _per_layer(value: object, n: int, what: str) -> list:
    """Broadcast a scalar setting to ``n`` hidden layers, or check a per-layer list."""
    if isinstance(value, (str, int, float)):
        return [value] * n
    values = list(value)  # type: ignore[arg-type]
    if len(values) != n:
        raise ValueError(f"MLPHead: {what} has {len(values)} entries, expected one per hidden layer ({n})")
    return values


class MLPHead(nn.Module):
    """``Linear → activation → Dropout`` per hidden layer, then ``Linear(out_dim)``.

    Args:
        in_dim: input width (the last dimension; any leading dimensions are kept).
        hidden_dims: widths of the hidden layers (may be empty: a single linear layer).
        out_dim: output width.
        activation: one name for every hidden layer, or one per hidden layer — the latter because
            AV-FusionNet's head mixes GELU and Tanh (its §2, eq. (4)).
        dropout: one probability for every hidden layer, or one per hidden layer.
        final_activation: optional activation after the output layer (e.g. ``"sigmoid"``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int = 1,
        activation: str | Sequence[str] = "gelu",
        dropout: float | Sequence[float] = 0.0,
        final_activation: str | None = None,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims)
        acts = _per_layer(activation, len(hidden_dims), "activation")
        drops = _per_layer(dropout, len(hidden_dims), "dropout")
        for p in drops:
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"MLPHead: dropout must be in [0, 1), found {p}")
        self.in_dim, self.out_dim = in_dim, out_dim
        layers: list[nn.Module] = []
        width = in_dim
        for h, act, p in zip(hidden_dims, acts, drops):
            layers += [nn.Linear(width, h), make_activation(act)]
            if p > 0:  # no Dropout module at all when off, so printed models stay readable
                layers.append(nn.Dropout(p))
            width = h
        layers.append(nn.Linear(width, out_dim))
        if final_activation is not None:
            layers.append(make_activation(final_activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_dim] → [..., out_dim]``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLPHead: expected last dimension {self.in_dim}, found shape {list(x.shape)}")
        return self.net(x)

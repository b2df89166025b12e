"""Loading upstream checkpoints into avlab's backbones: one strict mechanism, one converter per layout.

Every backbone that can start from public weights (S3D, SoundNet-8, ConvNeXt V2, ResNet-50,
SlowFast) names the upstream **layouts** it accepts. A :class:`Layout` is a key mapping plus checks:

* ``detect(keys)`` recognises the layout from the file's key names (auto-detection), or the user
  names it with the config key next to the weights path (e.g. ``model.net.motion.weights_layout``);
* ``ignore`` lists the upstream tensors that avlab deliberately does not use (classifier heads);
* ``rename(key)`` maps every other upstream key onto avlab's module; ``None`` means "not part of
  this layout", which is an error;
* ``adapt(key, tensor, target)`` converts a value whose storage differs (e.g. a Conv2d kernel stored
  transposed), default identity.

:func:`load_pretrained` then fails loudly, naming the config key and the file, on any upstream key
it cannot place, any avlab tensor left without a value, and any shape mismatch. The one tolerated gap
is BatchNorm's ``num_batches_tracked`` counter: checkpoints converted from Caffe2 or written by
old ports omit it, and it never changes an output (every BatchNorm here has a fixed momentum).

Nothing is downloaded: a file is read only from the local path the user gives.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avlab.errors import ConfigError

__all__ = ["Layout", "LoadReport", "file_sha256", "load_pretrained", "read_state_dict"]

log = logging.getLogger(__name__)

#: Containers that training scripts wrap a state dict in (Lightning/timm: ``state_dict``;
#: official ConvNeXt V2: ``model``; facebookresearch/SlowFast: ``model_state``).
_CONTAINERS = ("state_dict", "model_state", "model_state_dict", "model", "module")


def read_state_dict(path: str | Path, config_key: str) -> dict[str, Tensor]:
    """Tensors of a local ``.pt``/``.pth``/``.pyth``/``.ckpt``/``.safetensors`` file.

    Unwraps the usual containers and a DataParallel/DDP ``module.`` prefix; never downloads.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{config_key}: weights file {p} does not exist (weights are only read from a local path)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{config_key}: cannot read weights file {p}: {exc}") from exc
    unwrapped = True
    while unwrapped and isinstance(state, Mapping):
        unwrapped = False
        for key in _CONTAINERS:
            if isinstance(state.get(key), Mapping):
                state, unwrapped = state[key], True
                break
    if not isinstance(state, Mapping):
        raise ConfigError(f"{config_key}: {p} does not hold a state dict (found {type(state).__name__})")
    out = {re.sub(r"^(module\.)+", "", str(k)): v for k, v in state.items() if isinstance(v, Tensor)}
    if not out:
        raise ConfigError(f"{config_key}: {p} holds no tensors")
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file: the provenance of features computed with its weights."""
    h = hashlib.sha256()
    with Path(path).expanduser().open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _identity(key: str, value: Tensor, target: Tensor) -> Tensor:
    return value


@dataclass(frozen=True)
class Layout:
    """One upstream checkpoint layout: how its keys map onto an avlab module (see module doc)."""

    name: str
    source: str  # where the layout is defined upstream, for error messages and docs
    detect: Callable[[Sequence[str]], bool]
    rename: Callable[[str], str | None]
    ignore: tuple[str, ...] = ()  # regexes of upstream keys deliberately left out (classifier heads)
    adapt: Callable[[str, Tensor, Tensor], Tensor] = field(default=_identity)

    def ignores(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ignore)


@dataclass
class LoadReport:
    layout: str
    loaded: int
    ignored: list[str]
    path: str


def _pick(
    layouts: Sequence[Layout], keys: Sequence[str], layout: str | None, config_key: str, path: Path
) -> Layout:
    names = [lay.name for lay in layouts]
    if layout is not None:
        for lay in layouts:
            if lay.name == layout:
                return lay
        raise ConfigError(f"{config_key}_layout: unknown layout {layout!r}; use one of {', '.join(names)}")
    found = [lay for lay in layouts if lay.detect(keys)]
    if len(found) == 1:
        return found[0]
    what = "match none" if not found else f"match several ({', '.join(lay.name for lay in found)})"
    raise ConfigError(
        f"{config_key}: the key names of {path} (e.g. {list(keys)[:3]}) {what} of the known layouts "
        f"{', '.join(f'{lay.name} ({lay.source})' for lay in layouts)}; name one with {config_key}_layout"
    )


def load_pretrained(
    module: nn.Module,
    path: str | Path,
    layouts: Sequence[Layout],
    config_key: str,
    layout: str | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> LoadReport:
    """Load an upstream checkpoint into ``module``: every tensor placed, every shape equal, or an error.

    Args:
        module: the avlab module whose ``state_dict`` keys the layouts map onto.
        path: local weights file.
        layouts: the layouts this backbone accepts.
        config_key: the config key that named the file (every error message names it).
        layout: a layout name; None detects it from the key names.
        state: an already read state dict (``path`` is then only used in messages).
    """
    p = Path(path).expanduser()
    sd = dict(state) if state is not None else read_state_dict(p, config_key)
    lay = _pick(layouts, list(sd), layout, config_key, p)
    target = module.state_dict()
    mapped: dict[str, Tensor] = {}
    ignored, unexpected, wrong_shape, twice = [], [], [], []
    for key, value in sd.items():
        if lay.ignores(key):
            ignored.append(key)
            continue
        new = lay.rename(key)
        if new is None or new not in target:
            unexpected.append(key if new is None else f"{key} (-> {new})")
            continue
        if new in mapped:
            twice.append(f"{key} (-> {new})")
            continue
        value = lay.adapt(new, value, target[new])
        if tuple(value.shape) != tuple(target[new].shape):
            wrong_shape.append(f"{key}: {tuple(value.shape)} vs {new}: {tuple(target[new].shape)}")
            continue
        mapped[new] = value
    # BatchNorm counters are optional (see the module doc); everything else must be present.
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    problems = []
    for label, items in (
        ("upstream tensors this layout cannot place", unexpected),
        ("avlab tensors the file does not provide", missing),
        ("tensors with the wrong shape", wrong_shape),
        ("avlab tensors given twice", twice),
    ):
        if items:
            problems.append(f"{len(items)} {label}, e.g. {items[:4]}")
    if problems:
        raise ConfigError(
            f"{config_key}: {p} does not fit as a {lay.name} checkpoint ({lay.source}): "
            + "; ".join(problems)
            + ". Check that the file and the architecture constants in the config describe the same network."
        )
    for k, v in target.items():
        if k not in mapped:
            mapped[k] = v
    module.load_state_dict(mapped, strict=True)
    log.info(
        "%s: loaded %d tensors from %s (%s layout; %d classifier tensors ignored)",
        config_key,
        len(sd) - len(ignored),
        p,
        lay.name,
        len(ignored),
    )
    return LoadReport(lay.name, len(sd) - len(ignored), ignored, str(p))

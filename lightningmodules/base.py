"""Shared behaviour of every avlab LightningModule.

Metric names are uniform across tasks so runs compare in W&B and with ``avlab compare``:
``train/loss``, ``val/loss``, ``val/<metric>``, ``test/<metric>`` and ``test/<dataset>/<metric>``.
Everything is logged with ``add_dataloader_idx=False`` so Lightning never appends
``/dataloader_idx_N``.

Metrics that need every prediction at once (SRCC, GAP, per-video saliency averages) are computed
from :meth:`AvlabModule.gather_samples`, which all-gathers per-sample tensors from every DDP rank
and removes the duplicates that ``DistributedSampler`` pads in, using each sample's dataset index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule


class AvlabModule(LightningModule):
    """Base LightningModule: run-directory access, uniform logging, DDP-safe sample gathering."""

    def __init__(self) -> None:
        super().__init__()
        #: Set by the runner; ``None`` when the module is used outside ``avlab train``.
        self.run_dir: Path | None = None
        #: Lines the runner prints after the metrics table (e.g. a modality-importance summary).
        self.summary_lines: list[str] = []

    # ------------------------------------------------------------------ outputs
    @property
    def plots_dir(self) -> Path | None:
        if self.run_dir is None:
            return None
        path = Path(self.run_dir) / "plots"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def is_main_process(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def log_metrics(self, prefix: str, metrics: dict[str, float | torch.Tensor], **kwargs: Any) -> None:
        """Log ``{name: value}`` as ``prefix/name`` with avlab's naming rules."""
        kwargs.setdefault("add_dataloader_idx", False)
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, **kwargs)

    # ------------------------------------------------------------------ DDP gathering
    def gather_samples(self, samples: dict[str, torch.Tensor], index_key: str = "index") -> dict[str, torch.Tensor]:
        """Concatenate per-sample tensors from all ranks, de-duplicated by ``samples[index_key]``.

        Every rank gets the same result, ordered by sample index, so metrics computed from it are
        identical on all ranks and equal to a single-process evaluation.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            gathered = {}
            for key, value in samples.items():
                value = value.contiguous()
                # all_gather needs equal sizes on every rank: pad to the largest, then cut back.
                n = torch.tensor([value.shape[0]], device=value.device)
                sizes = self.all_gather(n).view(-1)
                max_n = int(sizes.max())
                if value.shape[0] < max_n:
                    pad = value.new_zeros((max_n - value.shape[0], *value.shape[1:]))
                    value = torch.cat([value, pad])
                out = self.all_gather(value)  # [world, max_n, ...]
                gathered[key] = torch.cat([out[r, : int(sizes[r])] for r in range(world)])
            samples = gathered
        if index_key not in samples:
            return samples
        index = samples[index_key].long()
        order = torch.argsort(index, stable=True)
        index = index[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return {k: v[order][keep] for k, v in samples.items()}

    # ------------------------------------------------------------------ inference on media
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Apply the model to new media named on the command line (``avlab predict``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support `avlab predict` on media")

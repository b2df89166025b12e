"""Training logic of the ``unqa`` task: one quality model for audio, image, video and AV.

The current training step of the three-step strategy (paper §IV) lives here — index, heads, loss,
trainable parts, learning rate — and is written into every checkpoint, so a resumed run rebuilds
the optimiser of the right step before Lightning restores its state
(:class:`avlab.callbacks.unqa_schedule.ThreeStepSchedule` decides when steps change).

Motion features (eq. 7) come from the frozen SlowFast and are data: the DataModule computes,
caches (with the extractor's provenance) and serves them in batches under ``motion``.

Metrics (per database, through the shared evaluation hook of :mod:`avlab.lightningmodules.base`):
``srcc`` (raw), ``plcc`` (raw) and, with ``data.logistic`` = ``"4"``/``"5"``, ``plcc_logistic``
after the 4/5-parameter logistic fit. Keys: ``val/<db>/srcc``, ``test/<db>/srcc``,
``test/<db>/plcc``, ``test/srcc_mean``. ``val/select`` = mean validation SRCC during the last step
and −1 before it, so the best checkpoint is a model of the final step (the paper tests "the top
models of the regressor refinement step").

``strategy`` selects how the network is trained (Table V):

* ``unqa`` — the paper's multi-modality strategy, steps switched by
  :class:`avlab.callbacks.unqa_schedule.ThreeStepSchedule`.
* ``lrs`` — linear rescaling (§V-C): "a standard regression model": the modality regressors and
  the extractors train together from the start with the MSE between the prediction and the score
  rescaled linearly to [0, 1]. The rescaling uses each database's *documented* score range
  (``mos_range``, the DataModule's ``mos_norm``) rather than the minimum and maximum of its training
  scores: it needs nothing fitted (so nothing leaks from validation or test scores), it is the same
  map on every split, and the paper's "linearly rescale the subjective scores of each QA database to
  [0, 1]" is a statement about the database's scale.
* ``mdt`` — mixed database training (Li et al. 2021, UNQA's ref. [17]): the modality regressors are
  the relative quality assessor, followed by a shared nonlinear mapping and a per-database linear
  scale alignment (:class:`avlab.models.unqa.MixedDatabaseMapping`); the loss is the sum of the
  monotonicity-, linearity- and error-induced losses (:func:`avlab.losses.mdt_loss`). Predictions
  (metrics, ``avlab predict``) are the mapped perceptual quality, the one score that needs no
  database name.

``lrs`` and ``mdt`` have no steps: every epoch trains the same parts with the same loss, no
step-one regressors are built, and ``val/select`` is the mean validation SRCC of every epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from avlab.errors import ConfigError
from avlab.lightningmodules.base import AvlabModule
from avlab.losses import mdt_loss
from avlab.metrics.quality import quality_metrics
from avlab.metrics.rank import mae_rank_loss, srcc_loss
from avlab.models.unqa import MixedDatabaseMapping, UNQANet

log = logging.getLogger(__name__)

__all__ = ["UNQAModule"]

_DEFAULT_STEP = {
    "name": "default",
    "epochs": 1,
    "heads": "modality",
    "loss": "srcc",
    "train": ["spatial", "audio", "modality_heads"],
    "lr": 1.0e-5,
    "weight_decay": 0.0,
}
#: Training strategies (Table V); see the module docstring.
STRATEGIES = ("unqa", "lrs", "mdt")


_PREDICT_NOTES = {
    "unqa": (
        "relative quality score of the unified model (higher = better); steps 2-3 train it with a "
        "rank (SRCC) loss, so it is not on any database's MOS scale"
    ),
    "lrs": (
        "quality on the [0, 1] scale to which LRS rescaled every database's documented score range "
        "(higher = better)"
    ),
    "mdt": ("MDT perceptual quality in (0, 1), before any database's scale alignment (higher = better)"),
}


class UNQAModule(AvlabModule):
    """UNQA (paper §III–IV).

    Args:
        net: :class:`~avlab.models.unqa.UNQANet`.
        databases: the data config's databases (``${data.databases}``): one step-one regressor is
            built per training database, so adding/dropping a database needs no code.
        lr: learning rate when no schedule callback sets one (paper 1e-5).
        srcc_temperature: τ of the soft rank in the SRCC loss (relative to the batch's spread).
        rank_weight: weight of L_rank in step one (eq. 9 uses 1).
        head_init: how the regressors start (the paper does not say). ``shared``: the step-one
            regressors of one modality start from the same weights, and a step that switches to the
            modality regressors starts each from the mean of its modality's step-one regressors;
            ``random``: every regressor has its own random initialisation. With randomly
            initialised extractors, differently initialised heads of one modality pull the shared
            extractor in conflicting directions, and fresh random modality heads undo step one.
        extractor_lr_scale: the spatial and audio extractors train at ``lr × extractor_lr_scale``
            (1 = the paper's single learning rate).
        strategy: ``unqa`` (three steps, set by the schedule callback), ``lrs`` or ``mdt`` (Table V;
            one loss throughout at ``lr``, no schedule callback), see the module docstring.
    """

    def __init__(
        self,
        net: UNQANet,
        databases: dict[str, Any] | None = None,
        lr: float = 1.0e-5,
        srcc_temperature: float = 0.05,
        rank_weight: float = 1.0,
        head_init: str = "shared",
        extractor_lr_scale: float = 1.0,
        strategy: str = "unqa",
    ) -> None:
        super().__init__()
        from avlab.datamodules.unqa_readers import parse_databases

        if databases is None:
            from avlab.demo.unqa import DEMO_DATABASES

            databases = DEMO_DATABASES
        specs = parse_databases(databases)
        for spec in specs:
            if not net.can_score(spec.modality):
                raise ConfigError(
                    f"database `{spec.name}` ({spec.modality}) cannot be scored with the enabled extractors "
                    f"(eq. 8); drop it with data.databases.{spec.name}=null"
                )
        if strategy not in STRATEGIES:
            raise ConfigError(f"model.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.net = net
        self.database_names = [s.name for s in specs]
        train_specs = [s for s in specs if s.role == "train"]
        if strategy == "unqa":
            # Step one's database-specific regressors; LRS and MDT never use them.
            self.net.add_database_heads({s.name: s.modality for s in train_specs})
        self.score_mapping = (
            MixedDatabaseMapping({s.name: s.mos_range for s in train_specs}) if strategy == "mdt" else None
        )
        if head_init not in ("shared", "random"):
            raise ConfigError(f"model.head_init must be shared or random, got {head_init!r}")
        self.head_init = head_init
        self.extractor_lr_scale = float(extractor_lr_scale)
        if head_init == "shared":
            self._share_database_head_init()
        self.lr, self.srcc_temperature, self.rank_weight = (
            float(lr),
            float(srcc_temperature),
            float(rank_weight),
        )
        self.step_index = -1
        self.step_spec: dict[str, Any] = {**_DEFAULT_STEP, "lr": self.lr}
        if strategy != "unqa":
            self.step_spec |= {"name": strategy, "loss": "mse" if strategy == "lrs" else "mdt"}
        self.is_final_step = True
        # 1 = modality regressors, 0 = database regressors; a buffer so `avlab test` (which loads
        # only the state dict) scores with the heads the checkpoint was trained with.
        self.register_buffer("heads_mode", torch.tensor(1, dtype=torch.long))
        self._frozen: list[str] = []

    # ------------------------------------------------------------------ regressor initialisation
    def _share_database_head_init(self) -> None:
        """Step-one regressors of one modality start from the same weights."""
        first: dict[str, str] = {}
        for name, modality in self.net.database_modality.items():
            if modality in first:
                self.net.database_heads[name].load_state_dict(
                    self.net.database_heads[first[modality]].state_dict()
                )
            else:
                first[modality] = name

    @torch.no_grad()
    def init_modality_heads_from_database_heads(self) -> None:
        """Each modality regressor := the mean of its modality's step-one regressors (same layout)."""
        if self.head_init != "shared" or self.net.regressor != "modality":
            return
        for modality, head in self.net.modality_heads.items():
            names = [n for n, m in self.net.database_modality.items() if m == modality]
            if not names:
                continue
            states = [self.net.database_heads[n].state_dict() for n in names]
            head.load_state_dict({k: torch.stack([st[k] for st in states]).mean(0) for k in states[0]})

    # ------------------------------------------------------------------ schedule state
    def enter_step(self, index: int, spec: dict[str, Any], final: bool = True) -> None:
        """Apply a step: heads, loss, trainable parts (the optimiser is rebuilt by the caller)."""
        self.step_index, self.step_spec, self.is_final_step = int(index), dict(spec), bool(final)
        self.heads_mode.fill_(0 if spec["heads"] == "database" else 1)
        groups = self.net.parameter_groups()
        for p in self.net.parameters():
            p.requires_grad_(False)
        for part in spec["train"]:
            for p in groups[part]:
                p.requires_grad_(True)
        self._frozen = [
            name
            for name in ("spatial", "audio")
            if name not in spec["train"] and getattr(self.net, name) is not None
        ]
        self.train(self.training)

    def frozen_in_eval(self) -> list[torch.nn.Module]:
        """The extractors this step does not train, and the (always frozen) SlowFast."""
        parts = [getattr(self.net, name) for name in getattr(self, "_frozen", [])]
        return parts + ([self.net.motion] if self.net.motion is not None else [])

    def train(self, mode: bool = True) -> UNQAModule:
        super().train(mode)
        if mode:
            # Frozen extractors stay in eval mode (BatchNorm statistics and dropout off).
            for name in getattr(self, "_frozen", []):
                getattr(self.net, name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unqa_step"] = {
            "index": self.step_index,
            "spec": dict(self.step_spec),
            "final": self.is_final_step,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("unqa_step")
        if state and state["index"] >= 0:
            self.enter_step(state["index"], state["spec"], state.get("final", True))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.net.parameter_groups()
        extractors = {id(p) for part in ("spatial", "audio") for p in groups[part]}
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.score_mapping is not None:
            params += list(self.score_mapping.parameters())  # MDT's mapping trains with the regressors
        if not params:
            raise ConfigError(f"training step {self.step_spec['name']!r} has no trainable parameters")
        lr = self.step_spec["lr"]
        ext = [p for p in params if id(p) in extractors]
        heads = [p for p in params if id(p) not in extractors]
        param_groups = [
            g
            for g in ({"params": ext, "lr": lr * self.extractor_lr_scale}, {"params": heads, "lr": lr})
            if g["params"]
        ]
        # Adam, constant learning rate (paper §V-A); one optimiser per step, rebuilt at each step start.
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=self.step_spec.get("weight_decay", 0.0))

    # ------------------------------------------------------------------ forward
    def features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.net.extract(
            frames=batch.get("frames"),
            motion=batch.get("motion"),
            wave=batch.get("wave"),
            wave_len=batch.get("wave_len"),
        )

    def score(self, batch: dict[str, Any], feats: dict[str, Tensor] | None = None) -> Tensor:
        """Scores with the heads of the current step (database heads in step one); MDT's are the
        mapped perceptual quality."""
        feats = self.features(batch) if feats is None else feats
        db = batch.get("database")
        if int(self.heads_mode) == 0 and db in self.net.database_heads:
            return self.net.database_score(feats, db)
        return self._unified(self.net.modality_score(feats, batch["modality"], batch.get("has_audio")))

    def _unified(self, raw: Tensor) -> Tensor:
        """The modality regressors' score as reported: MDT's mapped perceptual quality, else as is."""
        return raw if self.score_mapping is None else self.score_mapping(raw)[1]

    # ------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.strategy == "mdt":
            loss = self._mdt_loss(batch)
            self.log(
                "train/loss", loss, prog_bar=True, batch_size=len(batch["mos"]), add_dataloader_idx=False
            )
            return loss
        pred = self.score(batch)
        if self.strategy == "lrs":
            # LRS: MSE against the score linearly rescaled to [0, 1] by the database's documented range.
            loss = F.mse_loss(pred, batch["mos_norm"].to(pred.dtype))
        elif self.step_spec["loss"] == "mae_rank":
            loss = mae_rank_loss(pred, batch["mos_norm"], self.rank_weight)  # eq. 9–13 (step one)
        else:
            loss = srcc_loss(pred, batch["mos"], self.srcc_temperature)  # eq. 14–15 (steps two and three)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), add_dataloader_idx=False)
        return loss

    def _mdt_loss(self, batch: dict[str, Any]) -> Tensor:
        """MDT on one database's batch: relative, mapped and aligned scores, summed losses."""
        db = batch["database"]
        raw = self.net.modality_score(self.features(batch), batch["modality"], batch.get("has_audio"))
        relative, mapped = self.score_mapping(raw)
        aligned = self.score_mapping.align(mapped, db)
        return mdt_loss(relative, mapped, aligned, batch["mos"].to(raw.dtype), self.score_mapping.width(db))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collect("val", index=batch["index"], pred=self.score(batch).float(), mos=batch["mos"])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collect("test", index=batch["index"], pred=self.score(batch).float(), mos=batch["mos"])

    def _per_database(
        self, samples: dict[str, Tensor], table: pd.DataFrame, logistic: str | None
    ) -> dict[str, dict[str, float]]:
        pred, mos = samples["pred"].double().cpu().numpy(), samples["mos"].double().cpu().numpy()
        out: dict[str, dict[str, float]] = {}
        names = table["database"].to_numpy()
        for name in dict.fromkeys(names):  # databases in their config order
            sel = names == name
            if sel.sum() < 3:
                continue
            m = quality_metrics(pred[sel], mos[sel], logistic=logistic)
            out[str(name)] = {k: float(np.nan_to_num(v)) for k, v in m.items()} | {"n": float(sel.sum())}
        return out

    def evaluate(
        self, stage: str, samples: dict[str, Tensor], table: pd.DataFrame | None
    ) -> dict[str, float]:
        if table is None:
            raise ConfigError(
                "the unqa module needs the unqa DataModule's sample_table() to name the databases"
            )
        info = self.dataset_info
        per_db = self._per_database(samples, table, info.logistic if stage == "test" else None)
        keys = ("srcc", "plcc", "plcc_logistic", "krcc") if stage == "test" else ("srcc", "plcc")
        metrics = {f"{name}/{k}": m[k] for name, m in per_db.items() for k in keys if k in m}
        mean = float(np.mean([m["srcc"] for m in per_db.values()])) if per_db else 0.0
        metrics["srcc_mean"] = mean
        if stage == "val":
            # Checkpoint selection only among the final step's epochs (see module docstring).
            metrics["select"] = mean if self.is_final_step else -1.0
            return metrics
        metrics["plcc_mean"] = float(np.mean([m["plcc"] for m in per_db.values()])) if per_db else 0.0
        heads = "database" if int(self.heads_mode) == 0 else "modality"
        how = {"unqa": "", "lrs": ", LRS", "mdt": ", MDT mapped score"}[self.strategy]
        self.summary_lines = [f"UNQA per-database test results ({heads} regressors{how}):"] + [
            f"  {name:<14} n={int(m['n']):<4d} SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}"
            + (f"  PLCC(logistic) {m['plcc_logistic']:.4f}" if "plcc_logistic" in m else "")
            for name, m in per_db.items()
        ]
        # Every configured database gets a test metric, or a line saying why not (cross-dataset
        # tests score another DataModule's databases: only those are expected there).
        expected = self.database_names if info.name is None else []
        missing = sorted(set(expected) - set(per_db) - set(table["database"].unique()))
        untested = sorted(set(table["database"].unique()) - set(per_db))
        for name in untested:
            self.summary_lines.append(
                f"  {name:<14} no test metric: only {int((table['database'] == name).sum())} "
                "test stimuli (SRCC/PLCC need at least 3)"
            )
        for name in missing:
            self.summary_lines.append(f"  {name:<14} no test metric: no test stimuli in this run")
        self._write_predictions(samples, table, per_db)
        return metrics

    def _write_predictions(
        self, samples: dict[str, Tensor], table: pd.DataFrame, per_db: dict[str, dict[str, float]]
    ) -> None:
        from avlab.plots import scatter_prediction

        out = self.eval_outputs()
        if not out.enabled:
            return
        frame = pd.DataFrame(
            {
                "database": table["database"].to_numpy(),
                "modality": table["modality"].to_numpy(),
                "media": table["media"].to_numpy(),
                "mos": samples["mos"].cpu().numpy(),
                "predicted": samples["pred"].cpu().numpy(),
            }
        )
        out.write_csv("predictions_test.csv", frame)
        for name, m in per_db.items():
            sub = frame[frame["database"] == name]
            out.plot(
                f"{name}_prediction_vs_mos.png",
                scatter_prediction,
                sub["predicted"].to_numpy(),
                sub["mos"].to_numpy(),
                title=f"{name}: SRCC {m['srcc']:.3f}, PLCC {m['plcc']:.3f}",
            )

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Detect the modality of ``input`` and score it with that modality's regressor."""
        from avlab.datamodules.unqa_media import detect_modality

        if "input" not in inputs:
            raise ConfigError(
                "unqa predict needs input=FILE (an image, a video, an audio file or a video with audio)"
            )
        path = inputs["input"]
        modality = detect_modality(path)
        media = datamodule.media
        batch: dict[str, Any] = {"modality": modality}
        if modality == "image":
            batch["frames"] = media.image(path)[None]
        elif modality in ("video", "av"):
            batch["frames"] = media.video_frames(path)[None]
            if self.net.motion is not None:
                batch["motion"] = torch.from_numpy(datamodule.motion_feature(path))[None]
        if modality in ("audio", "av"):
            wave, n, has_audio = media.audio(path)
            batch.update(wave=wave[None], wave_len=torch.tensor([n]), has_audio=torch.tensor([has_audio]))
        if not self.net.can_score(modality):
            raise ConfigError(
                f"this model cannot score {modality} inputs (its extractors for eq. 8 are disabled)"
            )
        self.heads_mode.fill_(1)  # predict always uses the modality regressors (the unified model)
        feats = self.features(batch)
        score = float(self._unified(self.net.modality_score(feats, modality, batch.get("has_audio")))[0])
        used = "video" if modality == "av" and not bool(batch["has_audio"][0]) else modality
        return {
            "input": path,
            "modality": modality,
            "regressor": used,
            "score": score,
            "note": _PREDICT_NOTES[self.strategy],
        }

"""Training logic of the ``unqa`` task: one quality model for audio, image, video and AV.

The current training step of the three-step strategy (paper §IV) lives here — index, heads, loss,
trainable parts, learning rate — and is written into every checkpoint, so a resumed run rebuilds
the optimiser of the right step before Lightning restores its state
(:class:`avlab.callbacks.unqa_schedule.ThreeStepSchedule` decides when steps change).

Motion features (eq. 7) come from the frozen SlowFast; they are computed once per video in
:meth:`UNQAModule.setup`, stored in the dataset's feature cache (``<data.root>/.features``, keyed
by the file's content and the extractor's architecture/seed/weights) and handed to the datamodule,
which puts them into the batches.

Metrics (per database, on predictions gathered from every rank with DDP padding removed):
``srcc`` (raw), ``plcc`` (raw) and, with ``data.logistic`` = ``"4"``/``"5"``, ``plcc_logistic``
after the logistic fit of the reference notes (§0.4). Keys: ``val/<db>/srcc``, ``test/<db>/srcc``,
``test/<db>/plcc``, ``test/srcc_mean``. ``val/select`` = mean validation SRCC during the last step
and −1 before it, so the best checkpoint is a model of the final step (the paper tests "the top
models of the regressor refinement step").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avlab.errors import ConfigError
from avlab.lightningmodules.base import AvlabModule
from avlab.metrics.quality import quality_metrics
from avlab.metrics.rank import mae_rank_loss, srcc_loss
from avlab.models.unqa import UNQANet

log = logging.getLogger(__name__)

__all__ = ["UNQAModule"]

_DEFAULT_STEP = {"name": "default", "epochs": 1, "heads": "modality", "loss": "srcc",
                 "train": ["spatial", "audio", "modality_heads"], "lr": 1.0e-5, "weight_decay": 0.0}
MOTION_CACHE_VERSION = "1"


class UNQAModule(AvlabModule):
    """UNQA (paper §III–IV).

    Args:
        net: :class:`~avlab.models.unqa.UNQANet`.
        databases: the data config's databases (``${data.databases}``): one step-one regressor is
            built per training database, so adding/dropping a database needs no code.
        lr: learning rate when no schedule callback sets one (paper 1e-5).
        srcc_temperature: τ of the soft rank in the SRCC loss (relative to the batch's spread).
        rank_weight: weight of L_rank in step one (eq. 9 uses 1).
        motion_batch: clips per SlowFast forward when caching motion features.
    """

    def __init__(self, net: UNQANet, databases: dict[str, Any] | None = None, lr: float = 1.0e-5,
                 srcc_temperature: float = 0.05, rank_weight: float = 1.0, motion_batch: int = 4) -> None:
        super().__init__()
        from avlab.datamodules.unqa_readers import parse_databases

        if databases is None:
            from avlab.demo.unqa import DEMO_DATABASES

            databases = DEMO_DATABASES
        specs = parse_databases(databases)
        self.net = net
        self.net.add_database_heads({s.name: s.modality for s in specs if s.role == "train"})
        self.lr, self.srcc_temperature, self.rank_weight = float(lr), float(srcc_temperature), float(rank_weight)
        self.motion_batch = int(motion_batch)
        self.step_index = -1
        self.step_spec: dict[str, Any] = {**_DEFAULT_STEP, "lr": self.lr}
        self.is_final_step = True
        # 1 = modality regressors, 0 = database regressors; a buffer so `avlab test` (which loads
        # only the state dict) scores with the heads the checkpoint was trained with.
        self.register_buffer("heads_mode", torch.tensor(1, dtype=torch.long))
        self._outputs: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}
        self._frozen: list[str] = []

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
        self._frozen = [name for name in ("spatial", "audio") if name not in spec["train"] and getattr(self.net, name) is not None]
        self.train(self.training)

    def train(self, mode: bool = True) -> "UNQAModule":
        super().train(mode)
        if mode:
            # Frozen extractors stay in eval mode (BatchNorm statistics and dropout off).
            for name in getattr(self, "_frozen", []):
                getattr(self.net, name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unqa_step"] = {"index": self.step_index, "spec": dict(self.step_spec), "final": self.is_final_step}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("unqa_step")
        if state and state["index"] >= 0:
            self.enter_step(state["index"], state["spec"], state.get("final", True))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"training step {self.step_spec['name']!r} has no trainable parameters")
        # Adam, constant learning rate (paper §V-A); one optimiser per step, rebuilt at each step start.
        return torch.optim.Adam(params, lr=self.step_spec["lr"], weight_decay=self.step_spec.get("weight_decay", 0.0))

    # ------------------------------------------------------------------ motion features (eq. 7)
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "video_uids"):
            return
        for spec in dm.specs:
            if not self.net.can_score(spec.modality):
                raise ConfigError(f"database `{spec.name}` ({spec.modality}) cannot be scored with the enabled extractors "
                                  f"(eq. 8); drop it with data.databases.{spec.name}=null")
        self.prepare_motion(dm)

    @torch.no_grad()
    def prepare_motion(self, dm: Any) -> None:
        """F_m of every video/AV stimulus, from the feature cache or computed once."""
        motion = self.net.motion
        if motion is None or dm.table is None:
            return
        media = dm.media
        signature = {**motion.signature, "frames": media.motion_frames, "size": media.motion_size, "chunks": media.motion_chunks}
        if dm.motion_signature == signature:
            return
        from avlab.features.cache import cached, dataset_feature_cache

        cache = dataset_feature_cache(dm.dataset_root())
        feats = np.zeros((len(dm.table), motion.out_dim), dtype=np.float32)
        motion.eval()
        for uid in dm.video_uids():
            row = dm.row(int(uid))
            inputs = [row["media"]] + ([motion.weights] if motion.weights else [])
            params = {**signature, "yuv": list(dm._yuv(row)) if dm._yuv(row) else None}

            def compute(row: Any = row) -> dict[str, np.ndarray]:
                clips = media.motion_clips(row["media"], dm._yuv(row)).to(self.device)
                out = torch.cat([motion(c) for c in clips.split(self.motion_batch)])
                return {"motion": out.mean(dim=0).cpu().numpy()}  # mean over temporal chunks

            feats[int(uid)] = cached(cache, "unqa-slowfast", MOTION_CACHE_VERSION, params, inputs, compute)["motion"]
        dm.set_motion_features(feats, signature)

    # ------------------------------------------------------------------ forward
    def features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.net.extract(frames=batch.get("frames"), motion=batch.get("motion"), wave=batch.get("wave"),
                                wave_len=batch.get("wave_len"))

    def score(self, batch: dict[str, Any], feats: dict[str, Tensor] | None = None) -> Tensor:
        """Scores with the heads of the current step (database heads in step one)."""
        feats = self.features(batch) if feats is None else feats
        names = self._names()
        db = names[int(batch["db"][0])] if names else None
        if int(self.heads_mode) == 0 and db in self.net.database_heads:
            return self.net.database_score(feats, db)
        return self.net.modality_score(feats, batch["modality"], batch.get("has_audio"))

    def _names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return list(dm.names) if dm is not None else []

    # ------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred = self.score(batch)
        if self.step_spec["loss"] == "mae_rank":
            loss = mae_rank_loss(pred, batch["mos_norm"], self.rank_weight)  # eq. 9–13 (step one)
        else:
            loss = srcc_loss(pred, batch["mos"], self.srcc_temperature)  # eq. 14–15 (steps two and three)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), add_dataloader_idx=False)
        return loss

    def _collect(self, stage: str, batch: dict[str, Any]) -> None:
        pred = self.score(batch)
        self._outputs[stage].append({"uid": batch["uid"], "db": batch["db"], "pred": pred.detach().float(),
                                     "mos": batch["mos"]})

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect("test", batch)

    def _gathered(self, stage: str) -> dict[str, Tensor]:
        outs, self._outputs[stage] = self._outputs[stage], []
        if not outs:
            return {}
        merged = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return self.gather_samples(merged, index_key="uid")

    def _per_database(self, g: dict[str, Tensor], logistic: str | None) -> dict[str, dict[str, float]]:
        names = self._names()
        out: dict[str, dict[str, float]] = {}
        db = g["db"].cpu().numpy()
        pred, mos = g["pred"].double().cpu().numpy(), g["mos"].double().cpu().numpy()
        for d in np.unique(db):
            sel = db == d
            if sel.sum() < 3:
                continue
            m = quality_metrics(pred[sel], mos[sel], logistic=logistic)
            out[names[int(d)]] = {k: float(np.nan_to_num(v)) for k, v in m.items()} | {"n": float(sel.sum())}
        return out

    def on_validation_epoch_end(self) -> None:
        g = self._gathered("val")
        if not g or self.trainer.sanity_checking:
            return
        per_db = self._per_database(g, None)
        for name, m in per_db.items():
            self.log_metrics(f"val/{name}", {"srcc": m["srcc"], "plcc": m["plcc"]})
        mean = float(np.mean([m["srcc"] for m in per_db.values()])) if per_db else 0.0
        self.log("val/srcc_mean", mean, prog_bar=True, add_dataloader_idx=False)
        # Checkpoint selection only among the final step's epochs (see module docstring).
        self.log("val/select", mean if self.is_final_step else -1.0, add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        g = self._gathered("test")
        if not g:
            return
        dm = self.trainer.datamodule
        per_db = self._per_database(g, getattr(dm, "logistic", None))
        metrics: dict[str, float] = {}
        for name, m in per_db.items():
            for key in ("srcc", "plcc", "plcc_logistic", "krcc"):
                if key in m:
                    metrics[f"{name}/{key}"] = m[key]
        if per_db:
            metrics["srcc_mean"] = float(np.mean([m["srcc"] for m in per_db.values()]))
            metrics["plcc_mean"] = float(np.mean([m["plcc"] for m in per_db.values()]))
        self.log_metrics("test", metrics)
        heads = "database" if int(self.heads_mode) == 0 else "modality"
        self.summary_lines = [f"UNQA per-database test results ({heads} regressors):"] + [
            f"  {name:<14} n={int(m['n']):<4d} SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}"
            + (f"  PLCC(logistic) {m['plcc_logistic']:.4f}" if "plcc_logistic" in m else "") for name, m in per_db.items()]
        if self.run_dir is not None and self.is_main_process:
            self._write_predictions(dm, g, per_db)

    def _write_predictions(self, dm: Any, g: dict[str, Tensor], per_db: dict[str, dict[str, float]]) -> None:
        import pandas as pd

        from avlab.plots import scatter_prediction

        uid = g["uid"].cpu().numpy().astype(int)
        rows = dm.table.iloc[uid]
        frame = pd.DataFrame({"database": rows["db_name"].to_numpy(), "modality": rows["modality"].to_numpy(),
                              "media": rows["media"].to_numpy(), "mos": g["mos"].cpu().numpy(),
                              "predicted": g["pred"].cpu().numpy()})
        prefix = f"{dm.dataset_name}_" if getattr(dm, "dataset_name", None) else ""
        frame.to_csv(Path(self.run_dir) / f"{prefix}predictions_test.csv", index=False)
        for name, m in per_db.items():
            sub = frame[frame["database"] == name]
            scatter_prediction(sub["predicted"].to_numpy(), sub["mos"].to_numpy(),
                               Path(self.run_dir) / "plots" / f"{prefix}{name}_prediction_vs_mos.png",
                               title=f"{name}: SRCC {m['srcc']:.3f}, PLCC {m['plcc']:.3f}")

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Detect the modality of ``input`` and score it with that modality's regressor."""
        from avlab.datamodules.unqa import detect_modality

        if "input" not in inputs:
            raise ConfigError("unqa predict needs input=FILE (an image, a video, an audio file or a video with audio)")
        path = inputs["input"]
        modality = detect_modality(path)
        media = datamodule.media
        batch: dict[str, Any] = {"modality": modality, "db": torch.tensor([0])}
        if modality == "image":
            batch["frames"] = media.image(path)[None]
        elif modality in ("video", "av"):
            batch["frames"] = media.video_frames(path)[None]
            if self.net.motion is not None:
                clips = media.motion_clips(path)
                batch["motion"] = torch.cat([self.net.motion(c) for c in clips.split(self.motion_batch)]).mean(0, keepdim=True)
        if modality in ("audio", "av"):
            wave, n, has_audio = media.audio(path)
            batch.update(wave=wave[None], wave_len=torch.tensor([n]), has_audio=torch.tensor([has_audio]))
        if not self.net.can_score(modality):
            raise ConfigError(f"this model cannot score {modality} inputs (its extractors for eq. 8 are disabled)")
        self.heads_mode.fill_(1)  # predict always uses the modality regressors (the unified model)
        feats = self.features(batch)
        score = float(self.net.modality_score(feats, modality, batch.get("has_audio"))[0])
        used = "video" if modality == "av" and not bool(batch["has_audio"][0]) else modality
        return {"input": path, "modality": modality, "regressor": used, "score": score,
                "note": "relative quality score of the unified model (higher = better); steps 2-3 train it with a "
                        "rank (SRCC) loss, so it is not on any database's MOS scale"}

"""UNQA's three-step multi-modality training strategy (paper §IV, Fig. 6) as a Lightning callback.

Default steps (paper §V-A: 20, 10 and 10 epochs, learning rate 1e-5):

1. ``database_heads`` — M database-specific regressors, loss L_MAE + L_rank (eq. 9–13) on each
   database's own (normalised) MOS; spatial and audio extractors and the database heads train.
2. ``modality_heads`` — the four modality regressors, SRCC loss (eq. 14–15), which bypasses the
   different perceptual scales; extractors and modality heads train.
3. ``finetune`` — extractors frozen, only the modality regressors train, SRCC loss.

The SlowFast motion extractor is frozen throughout. Each step starts with a **fresh optimiser**.

Design (Lightning's ``BaseFinetuning`` callback has resume bugs, e.g. it re-freezes on resume): the
*module* owns the current step (index + spec, saved in every
checkpoint by :meth:`UNQAModule.on_save_checkpoint`), so on resume Lightning rebuilds the
optimiser of the right step — with the right trainable parameters — *before* it restores the
optimiser state. This callback only decides, at each epoch start, which step the epoch belongs
to; on a change it calls ``module.enter_step`` (freeze/unfreeze, heads, loss) and re-creates the
optimisers with ``trainer.strategy.setup_optimizers``.

With ``carry_best: true`` each step starts from the weights of its predecessor's epoch with the best
mean validation SRCC (``val/srcc_mean``) instead of its last epoch: the paper trains each step to
its best validation model and carries that into the next step. The default (``false``) continues
from the last epoch. The kept weights are part of the callback's checkpoint state, so a resumed run
carries the same model.

A step spec is a mapping with ``name``, ``epochs``, ``heads`` (``database`` | ``modality``),
``loss`` (``mae_rank`` | ``srcc``), ``train`` (parts: ``spatial``, ``audio``, ``database_heads``,
``modality_heads``) and ``lr``. Any number of steps is allowed, so the ablations of Table VI
(w/o FS, SS, TS) are configs that list two steps.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning import Callback, LightningModule, Trainer

from avlab.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PAPER_STEPS", "ThreeStepSchedule", "normalise_steps"]

PAPER_STEPS: list[dict[str, Any]] = [
    {
        "name": "database_heads",
        "epochs": 20,
        "heads": "database",
        "loss": "mae_rank",
        "train": ["spatial", "audio", "database_heads"],
        "lr": 1.0e-5,
    },
    {
        "name": "modality_heads",
        "epochs": 10,
        "heads": "modality",
        "loss": "srcc",
        "train": ["spatial", "audio", "modality_heads"],
        "lr": 1.0e-5,
    },
    {
        "name": "finetune",
        "epochs": 10,
        "heads": "modality",
        "loss": "srcc",
        "train": ["modality_heads"],
        "lr": 1.0e-5,
    },
]
PARTS = ("spatial", "audio", "database_heads", "modality_heads")


def normalise_steps(steps: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Validate step specs; fills defaults from the paper's step of the same ``heads``/``loss``."""
    steps = [dict(s) for s in (steps or PAPER_STEPS)]
    if not steps:
        raise ConfigError("callbacks.extra.schedule.steps is empty")
    out = []
    for i, s in enumerate(steps):
        where = f"schedule step {i + 1} ({s.get('name', '?')})"
        unknown = set(s) - {"name", "epochs", "heads", "loss", "train", "lr", "weight_decay"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {sorted(unknown)}; "
                "keys: name, epochs, heads, loss, train, lr, weight_decay"
            )
        spec = {
            "name": str(s.get("name", f"step{i + 1}")),
            "epochs": int(s.get("epochs", 1)),
            "heads": s.get("heads", "modality"),
            "loss": s.get("loss", "srcc" if s.get("heads", "modality") == "modality" else "mae_rank"),
            "train": list(s.get("train", PAPER_STEPS[1]["train"])),
            "lr": float(s.get("lr", 1.0e-5)),
            "weight_decay": float(s.get("weight_decay", 0.0)),
        }
        if spec["epochs"] < 1:
            raise ConfigError(f"{where}: epochs must be >= 1")
        if spec["heads"] not in ("database", "modality"):
            raise ConfigError(f"{where}: heads must be database or modality, got {spec['heads']!r}")
        if spec["loss"] not in ("mae_rank", "srcc"):
            raise ConfigError(f"{where}: loss must be mae_rank or srcc, got {spec['loss']!r}")
        bad = [p for p in spec["train"] if p not in PARTS]
        if bad or not spec["train"]:
            raise ConfigError(f"{where}: train must list some of {', '.join(PARTS)}, got {spec['train']}")
        out.append(spec)
    return out


class ThreeStepSchedule(Callback):
    """Switches UNQA's training step at epoch boundaries (see the module docstring).

    Args:
        steps: list of step specs; default :data:`PAPER_STEPS` (20/10/10 epochs).
        carry_best: start each step from the previous step's best-validation weights (see the module
            docstring); ``False`` continues from the last epoch.
    """

    def __init__(self, steps: list[dict[str, Any]] | None = None, carry_best: bool = False) -> None:
        super().__init__()
        self.steps = normalise_steps(steps)
        self.carry_best = bool(carry_best)
        self.transitions: list[dict[str, Any]] = []
        self._best: dict[str, Any] = {"step": -1, "score": None, "epoch": -1, "state": None}

    @property
    def state_key(self) -> str:
        return "ThreeStepSchedule"

    @property
    def total_epochs(self) -> int:
        return sum(s["epochs"] for s in self.steps)

    def step_for_epoch(self, epoch: int) -> int:
        """Index of the step that epoch ``epoch`` (0-based) belongs to; later epochs stay in the last."""
        end = 0
        for i, s in enumerate(self.steps):
            end += s["epochs"]
            if epoch < end:
                return i
        return len(self.steps) - 1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from avlab.lightningmodules.unqa import UNQAModule

        if not isinstance(pl_module, UNQAModule):
            raise ConfigError(
                "callbacks.extra.schedule: ThreeStepSchedule needs the unqa LightningModule, "
                f"got {type(pl_module).__name__}"
            )
        if pl_module.strategy != "unqa":
            # LRS and MDT train one loss throughout (Table V); steps would silently replace it.
            raise ConfigError(
                f"callbacks.extra.schedule: model.strategy={pl_module.strategy} has no training steps; "
                "drop the schedule with callbacks.extra.schedule=null"
            )
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs != self.total_epochs:
            warnings.warn(
                f"trainer.max_epochs={max_epochs} but the schedule's steps add up to "
                f"{self.total_epochs} epochs; "
                + (
                    "training stops early, inside a step"
                    if max_epochs < self.total_epochs
                    else "the extra epochs stay in the last step"
                ),
                UserWarning,
                stacklevel=2,
            )
        # Before configure_optimizers. A resumed run overrides this from the checkpoint afterwards
        # (module.on_load_checkpoint runs before the optimisers are built).
        if pl_module.step_index < 0:
            pl_module.enter_step(0, self.steps[0], final=len(self.steps) == 1)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        target = self.step_for_epoch(trainer.current_epoch)
        if target != pl_module.step_index:
            previous = self.steps[pl_module.step_index]["heads"] if pl_module.step_index >= 0 else None
            best, carried = self._best, None
            if self.carry_best and best["state"] is not None and best["step"] == pl_module.step_index:
                pl_module.load_state_dict(best["state"])
                log.info(
                    "UNQA schedule: step %d starts from epoch %d (best val/srcc_mean %.4f)",
                    target + 1,
                    best["epoch"],
                    best["score"],
                )
                carried = best["epoch"]
            self._best = {"step": -1, "score": None, "epoch": -1, "state": None}
            pl_module.enter_step(target, self.steps[target], final=target == len(self.steps) - 1)
            if previous == "database" and self.steps[target]["heads"] == "modality":
                # The modality regressors continue from what step one learned (model.head_init).
                pl_module.init_modality_heads_from_database_heads()
            # A fresh optimiser for every step (Adam moments of the previous step do not carry over).
            trainer.strategy.setup_optimizers(trainer)
            record = {"epoch": trainer.current_epoch, "step": target + 1, "name": self.steps[target]["name"]}
            self.transitions.append(record | ({"carried_from_epoch": carried} if carried is not None else {}))
            log.info(
                "UNQA schedule: epoch %d starts step %d (%s)",
                trainer.current_epoch,
                target + 1,
                self.steps[target]["name"],
            )
        pl_module.log(
            "train/schedule_step", float(target + 1), on_step=False, on_epoch=True, add_dataloader_idx=False
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.carry_best or trainer.sanity_checking or pl_module.step_index < 0:
            return
        score = trainer.callback_metrics.get("val/srcc_mean")
        if score is None:
            return
        score, best = float(score), self._best
        if best["step"] != pl_module.step_index or best["score"] is None or score > best["score"]:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self._best = {
                "step": pl_module.step_index,
                "score": score,
                "epoch": trainer.current_epoch,
                "state": state,
            }

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": [dict(s) for s in self.steps], "transitions": list(self.transitions)}
        if self.carry_best and self._best["state"] is not None:
            out["best"] = dict(self._best)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("steps")
        if saved and [s["epochs"] for s in saved] != [s["epochs"] for s in self.steps]:
            warnings.warn(
                "resuming with a different step schedule than the checkpoint's", UserWarning, stacklevel=2
            )
        self.transitions = list(state_dict.get("transitions", []))
        if "best" in state_dict:
            self._best = dict(state_dict["best"])

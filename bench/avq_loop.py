"""Lightning's training loop against a plain PyTorch loop, same model, data and optimiser.

Prints one JSON object. Both loops run in the same process, interleaved, several times; the
figure that matters is the ratio of median epoch times (goal: <= 1.05), not absolute seconds,
which are noise on a shared machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import warnings

import torch
from lightning import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from avlab.callbacks.data_wait import DataWait
from avlab.callbacks.nonfinite import StopOnNonFinite
from avlab.lightningmodules.avq import AVQModule
from avlab.losses import CCCRMSELoss
from avlab.models.avq import AttentiveAVFusionNet

N_SAMPLES, BATCH, EPOCHS, REPEATS = 1536, 32, 3, 5


class _DictBatches(TensorDataset):
    def __getitem__(self, i):  # the AVQ module's batch format
        v, a, y, idx = super().__getitem__(i)
        return {"video": v, "audio": a, "mos": y, "index": idx}


def make_data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    video = torch.randn(N_SAMPLES, 1, 6, generator=g)
    audio = torch.randn(N_SAMPLES, 1, 512, generator=g)
    mos = 1 + 4 * torch.rand(N_SAMPLES, generator=g)
    return DataLoader(
        _DictBatches(video, audio, mos, torch.arange(N_SAMPLES)), batch_size=BATCH, shuffle=True
    )


WAITS: list[float] = []  # DataWait's fraction of each Lightning measure (every bench reports it)


def lightning_epochs(loader: DataLoader) -> float:
    seed_everything(0, verbose=False)
    module = AVQModule(AttentiveAVFusionNet(), lr=3e-4)
    wait = DataWait()
    trainer = Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        # avlab's default run also checks every step's loss (callbacks.stop_on_nonfinite=loss).
        callbacks=[wait, StopOnNonFinite()],
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    WAITS.append(wait.mean_fraction())
    return (time.perf_counter() - start) / EPOCHS


def plain_epochs(loader: DataLoader) -> float:
    seed_everything(0, verbose=False)
    module = AVQModule(AttentiveAVFusionNet(), lr=3e-4)
    module.train()
    optimiser = torch.optim.AdamW(module.net.parameters(), lr=3e-4, weight_decay=1e-2)
    loss_fn = CCCRMSELoss(0.6)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for batch in loader:
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(module(batch["video"], batch["audio"]), batch["mos"])
            loss.backward()
            optimiser.step()
    return (time.perf_counter() - start) / EPOCHS


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    loader = make_data()
    plain_epochs(loader)  # warm-up: allocator, kernels
    lightning_epochs(loader)
    plain, light = [], []
    for _ in range(REPEATS):
        plain.append(plain_epochs(loader))
        light.append(lightning_epochs(loader))
    result = {
        "benchmark": "avq_training_loop",
        "model": "AttentiveAVFusionNet (paper configuration, 7.35M parameters)",
        "samples": N_SAMPLES,
        "batch_size": BATCH,
        "epochs_per_measure": EPOCHS,
        "repeats": REPEATS,
        "plain_pytorch_epoch_s_median": round(statistics.median(plain), 4),
        "lightning_epoch_s_median": round(statistics.median(light), 4),
        "lightning_over_plain_ratio": round(statistics.median(light) / statistics.median(plain), 4),
        "goal_ratio_at_most": 1.05,
        "lightning_data_wait_fraction_median": round(statistics.median(WAITS[1:]), 4),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A tiny regression task used to test the framework itself, independent of any paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from avlab.datamodules.base import AvlabDataModule
from avlab.errors import DataError
from avlab.lightningmodules.base import AvlabModule
from avlab.rundir import atomic_path


class _Rows(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> None:
        self.x, self.y, self.idx = torch.as_tensor(x), torch.as_tensor(y), idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.idx[i])
        return {"index": torch.tensor(j), "x": self.x[j], "y": self.y[j]}


class ToyDataModule(AvlabDataModule):
    task = "toy"
    supported_protocols = ("fold",)

    def __init__(
        self,
        root: str | None = None,
        n: int = 96,
        dim: int = 4,
        batch_size: int = 16,
        noise: float = 0.05,
        nan_targets: tuple[int, ...] = (),
    ) -> None:
        super().__init__(root=root, batch_size=batch_size)
        self.n, self.dim, self.noise = n, dim, noise
        #: Rows whose target is made NaN: a bad score in the data, for the divergence tests.
        self.nan_targets = tuple(nan_targets)

    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 4)).astype(np.float32)
        y = (x @ np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32) + 0.05 * rng.normal(size=96)).astype(
            np.float32
        )
        # Atomic: under DDP another rank may be reading the file while prepare_data rewrites it.
        with atomic_path(out_dir / "toy.npz") as tmp:
            np.savez(tmp, x=x, y=y)
        return out_dir

    def setup(self, stage: str | None = None) -> None:
        path = self.dataset_root(build=True) / "toy.npz"
        if not path.is_file():
            raise DataError(f"{path} missing")
        data = np.load(path)
        self.x, self.y = data["x"], data["y"].copy()
        self.y[list(self.nan_targets)] = np.nan
        order = np.arange(len(self.y))
        if self.split_kind == "fold":
            test = order[self.split_index :: self.split_count]
        else:
            test = order[-24:]
        rest = np.setdiff1d(order, test)
        self.parts = {"train": rest[:-16], "val": rest[-16:], "test": test}

    def sample_table(self, split: str) -> pd.DataFrame:
        idx = self.parts[split]
        return pd.DataFrame({"name": [f"row{j}" for j in idx], "y": self.y[idx]}, index=idx)

    def _loader(self, part: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            _Rows(self.x, self.y, self.parts[part]), batch_size=self.batch_size, shuffle=shuffle
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ToyModule(AvlabModule):
    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])
        self.log("val/loss", loss, add_dataloader_idx=False)

    def test_step(self, batch, batch_idx):
        self.collect("test", index=batch["index"], pred=self.net(batch["x"]).squeeze(-1), y=batch["y"])

    def evaluate(self, stage, samples, table):
        # The shared hook's contract, checked on every use: each sample exactly once, in index
        # order (also under DDP), and the sample_table rows aligned with the samples.
        assert torch.equal(samples["index"], torch.unique(samples["index"])), (
            "duplicate or unordered samples after gathering"
        )
        assert list(table.index) == samples["index"].tolist(), (
            "sample_table rows not aligned with the samples"
        )
        np.testing.assert_array_equal(table["y"].to_numpy(), samples["y"].cpu().numpy())
        rmse = torch.sqrt(torch.mean((samples["pred"] - samples["y"]) ** 2))
        self.eval_outputs().write_csv(
            f"predictions_{stage}.csv", table.assign(predicted=samples["pred"].cpu().numpy())
        )
        self.summary_lines = [f"toy: {len(samples['y'])} test samples"]
        return {"rmse": float(rmse), "n": float(len(samples["y"]))}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

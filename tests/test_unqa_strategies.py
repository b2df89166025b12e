"""Table V's other training strategies (LRS, MDT) and Table VIII's ResNet-50 spatial baseline.

* The MDT losses (Li et al. 2021) against direct loops over the pairs and scipy's PLCC.
* :class:`MixedDatabaseMapping`: its three scores against the formulas, its initialisation from the
  declared score ranges.
* The LightningModule: LRS's loss is the MSE against the range-rescaled score, MDT's the sum of the
  three losses on the relative, mapped and aligned scores; neither builds step-one regressors, and
  the three-step schedule refuses them.
* Both strategies fit two small image databases on different scales (KonIQ 1-5, CLIVE 0-100; 21
  tiny-demo images each) from random weights in a few seconds.
* ResNet-50: a torchvision-layout checkpoint loads with every tensor placed and computes what
  torchvision computes; the feature width follows the stages.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from avlab.callbacks.unqa_schedule import ThreeStepSchedule
from avlab.errors import ConfigError
from avlab.lightningmodules.unqa import UNQAModule
from avlab.losses import linearity_loss, mdt_loss, monotonicity_loss, scaled_l1_loss
from avlab.models.unqa import MixedDatabaseMapping, SpatialExtractor, UNQANet

DBS = {"koniq": {"format": "koniq10k", "path": "KonIQ-10k"}, "clive": {"format": "clive", "path": "CLIVE"}}


# =========================================================================== losses
def test_monotonicity_loss_matches_the_pairwise_sum() -> None:
    g = torch.Generator().manual_seed(0)
    q, y = torch.randn(9, generator=g), torch.randn(9, generator=g)
    y[3] = y[5]  # a tie costs nothing
    n = len(q)
    direct = sum(
        max(0.0, float(q[i] - q[j]) * float(np.sign(float(y[j] - y[i])))) for i in range(n) for j in range(n)
    ) / (n * (n - 1))
    assert float(monotonicity_loss(q, y)) == pytest.approx(direct, rel=1e-6)
    # Predictions in the scores' order cost nothing; a reversed order costs every ordered pair (i, j)
    # its gap |q_i − q_j|, so each unordered pair twice.
    assert float(monotonicity_loss(y * 2 + 1, y)) == 0.0
    ordered = torch.arange(5.0)
    reversed_cost = sum(abs(i - j) for i in range(5) for j in range(5)) / (5 * 4)
    assert float(monotonicity_loss(-ordered, ordered)) == pytest.approx(reversed_cost)


def test_linearity_and_error_losses_match_direct_computations() -> None:
    g = torch.Generator().manual_seed(1)
    q, y = (
        torch.randn(12, generator=g, dtype=torch.float64),
        torch.randn(12, generator=g, dtype=torch.float64),
    )
    assert float(linearity_loss(q, y)) == pytest.approx((1 - pearsonr(q.numpy(), y.numpy())[0]) / 2)
    assert float(linearity_loss(3 * y - 2, y)) == pytest.approx(0.0, abs=1e-12)
    assert float(linearity_loss(-y, y)) == pytest.approx(1.0)
    # A constant prediction has no PLCC: it counts as 0 (loss ½) with a finite gradient.
    const = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    loss = linearity_loss(const, y)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.5) and bool(torch.isfinite(const.grad).all())
    assert float(scaled_l1_loss(q, y, 4.0)) == pytest.approx(float((q - y).abs().mean()) / 4.0)
    with pytest.raises(ValueError, match="scale"):
        scaled_l1_loss(q, y, 0.0)


def test_mdt_loss_is_the_sum_of_the_three_and_one_item_keeps_the_error_term() -> None:
    g = torch.Generator().manual_seed(2)
    rel, mapped, aligned, y = (torch.rand(8, generator=g) for _ in range(4))
    expected = monotonicity_loss(rel, y) + linearity_loss(mapped, y) + scaled_l1_loss(aligned, y, 100.0)
    torch.testing.assert_close(mdt_loss(rel, mapped, aligned, y, 100.0), expected)
    one = mdt_loss(rel[:1], mapped[:1], aligned[:1], y[:1], 2.0)
    assert float(one) == pytest.approx(abs(float(aligned[0] - y[0])) / 2.0)


# =========================================================================== MDT mapping
def test_mixed_database_mapping_formulas_and_initialisation() -> None:
    mapping = MixedDatabaseMapping({"koniq": (1.0, 5.0), "clive": (0.0, 100.0)})
    raw = torch.tensor([-3.0, 0.0, 0.7, 4.0])
    relative, mapped = mapping(raw)
    q = 1 / (1 + np.exp(-raw.numpy()))
    p = 1 / (1 + np.exp(-(2 * math.sqrt(3) * q - math.sqrt(3))))
    np.testing.assert_allclose(relative.detach().numpy(), q, rtol=1e-6)
    np.testing.assert_allclose(mapped.detach().numpy(), p, rtol=1e-6)
    # Alignment starts as the declared range: p = 0 → low end, p = 1 → high end.
    ends = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(mapping.align(ends, "koniq"), torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(mapping.align(ends, "clive"), torch.tensor([0.0, 100.0]))
    assert mapping.width("clive") == 100.0
    with pytest.raises(ConfigError, match="no scale alignment"):
        mapping.align(ends, "konvid")
    with pytest.raises(ConfigError, match="high > low"):
        MixedDatabaseMapping({"bad": (5.0, 1.0)})


# =========================================================================== the LightningModule
def _module(strategy: str, monkeypatch: pytest.MonkeyPatch, lr: float = 1e-3) -> UNQAModule:
    torch.manual_seed(0)
    module = UNQAModule(
        UNQANet(spatial=SpatialExtractor("convnextv2_atto", stages=[0, 1, 2])),
        databases=DBS,
        strategy=strategy,
        lr=lr,
    )
    monkeypatch.setattr(module, "log", lambda *a, **k: None)  # no Trainer to log to
    return module


def _batch(database: str, n: int = 6, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (1.0, 5.0) if database == "koniq" else (0.0, 100.0)
    mos = lo + (hi - lo) * torch.rand(n, generator=g)
    return {
        "frames": torch.rand(n, 1, 3, 32, 32, generator=g),
        "mos": mos,
        "mos_norm": (mos - lo) / (hi - lo),
        "database": database,
        "modality": "image",
    }


def test_lrs_loss_is_mse_against_the_range_rescaled_score(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module("lrs", monkeypatch).eval()
    batch = _batch("clive")
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        pred = module.net.modality_heads["image"](module.net.spatial(batch["frames"])).squeeze(-1)
    assert float(loss) == pytest.approx(float(((pred - batch["mos"] / 100.0) ** 2).mean()), rel=1e-5)
    assert len(module.net.database_heads) == 0 and module.score_mapping is None
    assert module.step_spec["loss"] == "mse" and module.step_spec["heads"] == "modality"


def test_mdt_loss_and_score_use_the_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module("mdt", monkeypatch).eval()
    batch = _batch("koniq")
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        raw = module.net.modality_heads["image"](module.net.spatial(batch["frames"])).squeeze(-1)
        relative, mapped = module.score_mapping(raw)
        aligned = module.score_mapping.align(mapped, "koniq")
        expected = mdt_loss(relative, mapped, aligned, batch["mos"], 4.0)
        torch.testing.assert_close(module.score(batch), mapped)
    torch.testing.assert_close(loss, expected)
    # The mapping's parameters train with the regressors (one optimiser group with the heads).
    opt = module.configure_optimizers()
    trained = {id(p) for group in opt.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in module.score_mapping.parameters())
    assert set(module.score_mapping.scale) == {"koniq", "clive"} and len(module.net.database_heads) == 0


def test_strategies_refuse_the_three_step_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module("lrs", monkeypatch)
    with pytest.raises(ConfigError, match="schedule=null"):
        ThreeStepSchedule().setup(None, module, "fit")
    with pytest.raises(ConfigError, match="strategy"):
        _module("ibm", monkeypatch)


def test_strategy_and_resnet_experiments_compose() -> None:
    from avlab.config import load_experiment

    for name, strategy in (("unqa/strategy_lrs", "lrs"), ("unqa/strategy_mdt", "mdt")):
        cfg = load_experiment(name)
        assert cfg.model.strategy == strategy and "schedule" not in cfg.callbacks.extra
        assert cfg.callbacks.extra.task_sampling.mode == "shuffle"
        assert cfg.callbacks.extra.task_sampling.audio_repeat == 1
    cfg = load_experiment("unqa/spatial_resnet50")
    assert cfg.model.net.spatial.backbone == "resnet50" and cfg.model.net.spatial.use_mhsa is False
    # A table row switches the schedule back off after the demo overlay (which sets its steps).
    cfg = load_experiment(
        "unqa/strategy_mdt",
        ["callbacks.extra.schedule=null"],
        overlays=["unqa/tables/_demo"],
    )
    assert "schedule" not in cfg.callbacks.extra and cfg.model.lr == pytest.approx(1e-3)


# =========================================================================== learning on the demo
@pytest.fixture(scope="module")
def two_databases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """KonIQ (MOS 1-5) and CLIVE (MOS 0-100) of the tiny demo, 21 images each, as whole batches of
    32-px native crops (the CPU-scale inputs of unqa/_base)."""
    from avlab.datamodules.unqa import UNQADataModule
    from avlab.demo.unqa import build_unqa_demo

    root = build_unqa_demo(tmp_path_factory.mktemp("demo") / "unqa", size="tiny", databases=list(DBS))
    dm = UNQADataModule(root=str(root), databases=DBS, spatial_sampling="native", image_size=32)
    dm.setup("fit")
    table = dm.table
    return {
        name: dm.collate([dm.load_item(int(u)) for u in table["uid"][table["db_name"] == name]])
        for name in DBS
    }


def _fit(module: UNQAModule, data: dict[str, dict[str, Any]], steps: int) -> tuple[list[float], dict]:
    """Alternating databases, batches of 16 of a database's 21 images, the module's own loss and
    optimiser; returns the loss curve and the training SRCC per database."""
    opt = module.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    names, losses = list(data), []
    module.train()
    for step in range(steps):
        batch = data[names[step % len(names)]]
        idx = torch.randperm(len(batch["mos"]), generator=gen)[:16]
        sub = {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = module.training_step(sub, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    module.eval()
    with torch.no_grad():
        srcc = {
            n: float(spearmanr(module.score(b).numpy(), b["mos"].numpy()).statistic) for n, b in data.items()
        }
    return losses, srcc


@pytest.mark.parametrize("strategy", ["lrs", "mdt"])
def test_strategy_learns_two_databases_on_different_scales(
    strategy: str, two_databases: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From random weights, 30 steps at lr 1e-3 (~10 s on 2 cores): the loss falls well below its
    start (measured: to 0.29x for LRS, 0.47x for MDT) and the training SRCC of both databases is far
    above a constant predictor's 0 (measured: 0.78/0.64 and 0.88/0.62)."""
    losses, srcc = _fit(_module(strategy, monkeypatch), two_databases, steps=30)
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.6 * first, (first, last)
    assert min(srcc.values()) > 0.45 and float(np.mean(list(srcc.values()))) > 0.6, srcc


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lrs", "mdt"])
def test_strategy_fits_two_databases_on_different_scales(
    strategy: str, two_databases: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 steps (~20 s each on 2 cores): the loss falls to a fraction of its start (measured:
    ~0.2x) and the training SRCC is high on both databases (measured: 0.87/0.70 LRS, 0.88/0.66
    MDT)."""
    losses, srcc = _fit(_module(strategy, monkeypatch), two_databases, steps=60)
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.4 * first, (first, last)
    assert min(srcc.values()) > 0.55 and float(np.mean(list(srcc.values()))) > 0.7, srcc


# =========================================================================== ResNet-50 (Table VIII)
def test_resnet50_torchvision_checkpoint_loads_and_matches(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # random BatchNorm statistics: an unloaded buffer would change the output
        for name, t in ref.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape) * 0.1)
    torch.save(ref.state_dict(), tmp_path / "resnet50.pth")  # fc.* (the classifier) is ignored
    spatial = SpatialExtractor("resnet50", stages=[0, 1, 2], weights=str(tmp_path / "resnet50.pth")).eval()
    ref.eval().fc = torch.nn.Identity()
    assert set(spatial.backbone.state_dict()) == set(ref.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(spatial.backbone(x), ref(x))
    # Stages 0-2 of ResNet-50: 256 + 512 + 1024 channels; mean and std of each (eq. 4-6).
    assert spatial.channels == 1792 and spatial.out_dim == 3584
    with torch.no_grad():
        assert spatial(torch.rand(2, 1, 3, 32, 32)).shape == (2, 3584)
    assert SpatialExtractor("resnet50", stages=[1, 2, 3], use_mhsa=False).out_dim == 2 * (512 + 1024 + 2048)


def test_resnet_checkpoint_of_another_network_fails_loudly(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ConfigError, match="model.net.spatial.weights"):
        SpatialExtractor("resnet50", stages=[0, 1, 2], weights=str(tmp_path / "resnet18.pth"))
    with pytest.raises(ConfigError, match="torchvision ResNet"):
        SpatialExtractor("vgg16")


# =========================================================================== end to end
@pytest.mark.slow
def test_mdt_experiment_trains_tests_reloads_and_predicts(tmp_path: Path, capsys) -> None:
    """`avlab train unqa/strategy_mdt` for one epoch on the tiny demo (15-60 s): no schedule, no
    step-one regressors, the mapping in the checkpoint, and `avlab predict` scores with it."""
    import json

    from avlab import cli
    from avlab.lightningmodules.base import AvlabModule

    fast = [
        "data.demo_size=tiny",
        "data.databases.clive=null",
        "data.databases.tcd_voip=null",
        "data.databases.konvid=null",
        "data.databases.live_sjtu=null",
        "data.image_size=32",
        "data.audio_seconds=1.0",
        "logger.wandb.mode=disabled",
        f"run.root={tmp_path / 'runs'}",
    ]
    assert cli.main(["train", "unqa/strategy_mdt", *fast, "trainer.max_epochs=1", "model.lr=1e-3"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test/koniq/srcc", "test/noizeus/srcc"} <= set(metrics)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert "ThreeStepSchedule" not in state["callbacks"] and "WeightedTaskSampling" in state["callbacks"]
    assert not any(k.startswith("net.database_heads.") for k in state["state_dict"])
    module = AvlabModule.load_from_checkpoint(ckpt)
    assert module.strategy == "mdt"
    torch.testing.assert_close(
        module.score_mapping.scale["koniq"].detach(), state["state_dict"]["score_mapping.scale.koniq"]
    )
    from avlab.datamodules.unqa import UNQADataModule
    from avlab.paths import cache_dir

    root = UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")
    image = next((root / "KonIQ-10k" / "1024x768").iterdir())
    assert cli.main(["predict", "unqa/strategy_mdt", *fast, f"ckpt_path={ckpt}", f"input={image}"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["modality"] == "image" and "MDT" in result["note"] and 0.0 < result["score"] < 1.0

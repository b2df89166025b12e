"""Adaptive weighted task sampling: Fig. 7 weights, same database on every rank, distinct samples,
resumable."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch

from avlab.callbacks.task_sampling import TaskSampler, WeightedTaskSampling

MODS = ["audio", "image", "video"]


def _indices(sizes: list[int]) -> list[np.ndarray]:
    start, out = 0, []
    for n in sizes:
        out.append(np.arange(start, start + n))
        start += n
    return out


def test_fig7_audio_steps_are_repeated() -> None:
    # Fig. 7: 2, 4 and 6 steps; the audio database's 2 steps become 8 with a factor 4.
    s = TaskSampler(audio_repeat=4)
    steps = s.steps_per_database([16, 32, 48], MODS, global_batch=8)
    assert steps == [8, 4, 6]
    np.testing.assert_allclose(s.probabilities(steps), np.array([8, 4, 6]) / 18)
    assert TaskSampler(audio_repeat=1).steps_per_database([16, 32, 48], MODS, 8) == [2, 4, 6]


def test_realised_mix_follows_the_weights() -> None:
    s = TaskSampler(seed=3, audio_repeat=4)
    counts: Counter[int] = Counter()
    for _ in range(200):
        counts.update(d for d, _ in s.plan_epoch(_indices([16, 32, 48]), MODS, batch_size=8))
    total = sum(counts.values())
    assert total == 200 * 18
    for d, p in enumerate(np.array([8, 4, 6]) / 18):
        assert abs(counts[d] / total - p) < 0.02
    shuffle = TaskSampler(seed=3, mode="shuffle").plan_epoch(_indices([16, 32, 48]), MODS, batch_size=8)
    assert Counter(d for d, _ in shuffle) == {0: 8, 1: 4, 2: 6}


def test_ranks_draw_the_same_database_with_distinct_samples() -> None:
    idx = _indices([10, 33, 50])
    plans = [TaskSampler(seed=7).plan_epoch(idx, MODS, batch_size=4, world_size=2, rank=r) for r in range(2)]
    assert len(plans[0]) == len(plans[1]) > 0
    for (d0, b0), (d1, b1) in zip(*plans):
        assert d0 == d1, "every rank must train on the same database at a given step"
        assert len(b0) == len(b1) == 4
        assert not set(b0) & set(b1), "ranks must see distinct samples"
        assert set(b0) | set(b1) <= set(idx[d0])


def test_small_database_cycles_and_batches_are_full() -> None:
    plan = TaskSampler(seed=0, audio_repeat=4).plan_epoch(_indices([3, 40, 0]), MODS, batch_size=8)
    assert {d for d, _ in plan} <= {0, 1}
    assert all(len(b) == 8 for _, b in plan)


def test_state_dict_resumes_the_same_sequence_and_loads_weights_only() -> None:
    idx = _indices([16, 32, 48])
    a = WeightedTaskSampling(seed=11, audio_repeat=4)
    a.sampler.plan_epoch(idx, MODS, 8)  # epoch 0
    buf = io.BytesIO()
    torch.save({"cb": a.state_dict()}, buf)
    expected = [a.sampler.plan_epoch(idx, MODS, 8) for _ in range(2)]  # epochs 1-2, uninterrupted
    b = WeightedTaskSampling(seed=11, audio_repeat=4)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True)["cb"])
    resumed = [b.sampler.plan_epoch(idx, MODS, 8) for _ in range(2)]
    for pe, pr in zip(expected, resumed):
        assert [d for d, _ in pe] == [d for d, _ in pr]
        for (_, x), (_, y) in zip(pe, pr):
            np.testing.assert_array_equal(x, y)


def test_bad_settings_are_errors() -> None:
    from avlab.errors import ConfigError

    with pytest.raises(ConfigError, match="mode"):
        TaskSampler(mode="temperature")
    with pytest.raises(ConfigError, match="audio_repeat"):
        TaskSampler(audio_repeat=0)

"""The checks that need a GPU, in one run that writes one JSON file.

A GPU machine is often lent for minutes, so everything that needs one is here, in the order of
what matters most, and the JSON is rewritten after every section (a run cut short still reports
what it measured):

* ``train/<experiment>``: ``saliency/avrsp_av`` and ``unqa/unqa_paper`` at the papers' input and
  network sizes (random initialisation) on the small demo data: ``--steps`` training steps in
  bf16 mixed precision with ``data.num_workers`` = the host's cores. Reports steps/s after a
  warm-up, the fraction of each step spent waiting for data (goal < 5 %), peak GPU memory, and the
  loss trace. Then the first ``--agree-steps`` steps again in fp32 from the same seed: the bf16
  losses must follow the fp32 ones (the largest relative difference is reported).
* ``nvjpeg``: the demo's JPEG frames decoded by nvJPEG (``data.jpeg_device=cuda``) against PIL:
  largest and mean pixel difference, and frames/s of both.
* ``vmaf_torch``: ``bench/avq_vmaf.py``'s figures (libvmaf against vmaf-torch on CPU and CUDA).
* ``gpu_tests``: the suite's ``gpu``-marked tests.

``--smoke`` runs the same code on the CPU at the CPU overlays' sizes for a few steps: it proves the
script works before a GPU is lent (the figures mean nothing there).

    python bench/gpu_checks.py [--out gpu_checks.json] [--steps 150] [--agree-steps 20]
                               [--only train,nvjpeg,vmaf_torch,gpu_tests] [--smoke]

It prints the report as one JSON object, like every bench script; ``--out`` also writes it to a
file after every section. Without a CUDA device it runs the smoke test (so ``make bench`` stays
short on a CPU machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning import Callback

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("train", "nvjpeg", "vmaf_torch", "gpu_tests")
#: (experiment, overlays and overrides on a GPU, the same at CPU smoke scale).
EXPERIMENTS = {
    "saliency/avrsp_av": ([], ["data.demo_size=tiny"], ["saliency/_cpu"]),
    "unqa/unqa_paper": ([], ["data.demo_size=tiny"], ["unqa/_cpu"]),
}
#: In smoke mode unqa runs its CPU-sized experiment: the paper's network needs a GPU's memory and time.
SMOKE_STAND_IN = {"unqa/unqa_paper": "unqa/unqa_demo"}


def _cuda() -> bool:
    return torch.cuda.is_available()


class StepRecorder(Callback):
    """Per training step: the loss, the seconds waiting for the batch and the seconds of the whole
    step (what ``callbacks.data_wait`` measures, kept per step here)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.waits: list[float] = []
        self.steps: list[float] = []
        self._end: float | None = None
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._end = time.perf_counter()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if _cuda():
            torch.cuda.synchronize()  # a step is done when the GPU is, not when its work was queued
        now = time.perf_counter()
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach().float()) if loss is not None else math.nan)
        if self._end is not None:
            self.waits.append(self._start - self._end)
            self.steps.append(now - self._end)
        self._end = now


def train_steps(
    experiment: str, overlays: list[str], overrides: list[str], steps: int, precision: str, work: Path
) -> dict[str, Any]:
    """Fit ``steps`` training steps of an experiment (no validation, no checkpoints) and measure them."""
    from lightning import Trainer, seed_everything
    from omegaconf import OmegaConf

    from avlab.config import load_experiment
    from avlab.instantiate import instantiate

    workers = os.cpu_count() or 1
    cfg = load_experiment(
        experiment,
        [*overrides, f"data.num_workers={workers}", "logger.wandb.mode=disabled"],
        overlays=overlays,
    )
    seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    recorder = StepRecorder()
    extra = [instantiate(node) for node in (OmegaConf.select(cfg, "callbacks.extra") or {}).values()]
    trainer = Trainer(
        accelerator="gpu" if _cuda() else "cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(work),
        callbacks=[*extra, recorder],
    )
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    warm = min(10, max(1, len(recorder.steps) // 5))  # the first steps start workers and compile kernels
    waits, step_times = recorder.waits[warm:], recorder.steps[warm:]
    out: dict[str, Any] = {
        "experiment": experiment,
        "precision": precision,
        "num_workers": workers,
        "batch_size": int(cfg.data.batch_size),
        "steps": len(recorder.losses),
        "fit_seconds": round(seconds, 2),
        "warmup_steps": warm,
        "steps_per_s": round(len(step_times) / sum(step_times), 3) if step_times else None,
        "data_wait_fraction": round(sum(waits) / sum(step_times), 4) if step_times else None,
        "losses": [round(x, 5) for x in recorder.losses],
        "losses_finite": all(math.isfinite(x) for x in recorder.losses),
    }
    if _cuda():
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def section_train(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for experiment, (gpu_overlays, smoke_overrides, smoke_overlays) in EXPERIMENTS.items():
        name = SMOKE_STAND_IN.get(experiment, experiment) if args.smoke else experiment
        overlays = smoke_overlays if args.smoke else gpu_overlays
        overrides = smoke_overrides if args.smoke else []
        precision = "bf16-mixed" if _cuda() else "32-true"
        bf16 = train_steps(name, overlays, overrides, args.steps, precision, work / name.replace("/", "_"))
        fp32 = train_steps(name, overlays, overrides, args.agree_steps, "32-true", work / f"{name}_fp32")
        pairs = list(zip(bf16["losses"], fp32["losses"], strict=False))
        rel = [abs(a - b) / max(abs(b), 1e-8) for a, b in pairs]
        bf16["fp32_agreement"] = {
            "steps": len(pairs),
            "fp32_losses": fp32["losses"],
            "max_relative_difference": round(max(rel), 5) if rel else None,
            "first_step_relative_difference": round(rel[0], 6) if rel else None,
        }
        results[experiment] = bf16
    return results


def section_nvjpeg(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from avlab.datamodules.saliency import SaliencyDataModule
    from avlab.features.frame_cache import decode_images

    root = SaliencyDataModule(demo_size="tiny" if args.smoke else "small").dataset_root(build=True)
    files = sorted(root.rglob("*.jpg"))[: 64 if args.smoke else 512]
    if not files:
        return {"skipped": f"no JPEG files under {root}"}
    out: dict[str, Any] = {"files": len(files)}
    devices = ["cpu"] + (["cuda"] if _cuda() else [])
    decoded = {}
    for device in devices:
        backend = "pil" if device == "cpu" else "torchvision"
        decode_images(files[:4], device, backend=backend)  # warm-up: libraries, CUDA context
        start = time.perf_counter()
        frames = [decode_images([f], device, backend=backend) for f in files]
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{device}_frames_per_s"] = round(len(files) / (time.perf_counter() - start), 1)
        decoded[device] = frames
    if "cuda" in decoded:
        diffs = [
            (a.int() - b.cpu().int()).abs() for a, b in zip(decoded["cpu"], decoded["cuda"], strict=True)
        ]
        out["max_pixel_difference"] = int(max(int(d.max()) for d in diffs))
        out["mean_pixel_difference"] = round(float(sum(d.float().mean() for d in diffs) / len(diffs)), 4)
        start = time.perf_counter()
        decode_images(files, "cuda", backend="torchvision")  # one batched call, as the cache builder does
        torch.cuda.synchronize()
        out["cuda_batched_frames_per_s"] = round(len(files) / (time.perf_counter() - start), 1)
    return out


def section_vmaf_torch(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # The CPU torch backend is already measured (about 14 frames/s: a minute here); CUDA only.
    cmd = [sys.executable, str(ROOT / "bench" / "avq_vmaf.py"), "--frames", "250", "--repeats", "3"]
    cmd += ["--torch-devices", "cuda"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.section_timeout)
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    text = proc.stdout
    return json.loads(text[text.index("{") : text.rindex("}") + 1])  # the bench prints one JSON object


def section_gpu_tests(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:randomly", str(ROOT / "tests")]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=args.section_timeout, cwd=ROOT
    )
    return {"exit_code": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


SECTION_FUNCTIONS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "train": section_train,
    "nvjpeg": section_nvjpeg,
    "vmaf_torch": section_vmaf_torch,
    "gpu_tests": section_gpu_tests,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="also write the report here, after every section")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--steps", type=int, default=150, help="bf16 training steps per experiment")
    p.add_argument("--agree-steps", type=int, default=20, help="fp32 steps compared with the bf16 losses")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--section-timeout", type=int, default=300, help="seconds for each subprocess section")
    p.add_argument("--smoke", action="store_true", help="CPU, CPU-overlay sizes: proves the script runs")
    args = p.parse_args(argv)
    if not _cuda() and not args.smoke:
        # `make bench` on a machine without a GPU: the papers' sizes would take hours on a CPU.
        print("gpu_checks: PyTorch sees no CUDA device; running the CPU smoke test instead", file=sys.stderr)
        args.smoke = True
    if args.smoke:
        args.steps, args.agree_steps = min(args.steps, 4), min(args.agree_steps, 2)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="avlab-gpu-checks-"))
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if _cuda() else None,
            "smoke": args.smoke,
        }
    }
    for name in wanted:
        if name == "train" or not args.smoke or name == "nvjpeg":
            start = time.perf_counter()
            try:
                report[name] = SECTION_FUNCTIONS[name](args, args.work)
            except Exception as exc:  # noqa: BLE001 - one failing check must not lose the others
                report[name] = {"failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            report[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        else:
            report[name] = {"skipped": "needs a GPU (smoke run)"}
        if args.out is not None:  # after every section: a run cut short still reports what it measured
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))

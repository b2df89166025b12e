"""The ``avlab`` command line: train, test, predict, data, features, sweep, compare, table, cache."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from avlab.api import experiment_config
from avlab.errors import AvlabError, ConfigError

EPILOG = """Overrides use OmegaConf dot-list syntax, e.g. trainer.max_epochs=3 data.root=/data/avq seed=1.
Public keys: data.root, trainer.{max_epochs,accelerator,devices,strategy,precision}, seed, run.root,
logger.wandb.mode (offline|online|disabled), ckpt_path, cv.folds, splits.repeats."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avlab",
        description="Audio-visual deep-learning experiments on PyTorch Lightning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from avlab import __version__

    p.add_argument("--version", action="version", version=f"avlab {__version__}")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars (feature extraction, caches, demo data, checks, sweeps, training)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def exp_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument(
            "experiment",
            nargs="?",
            help="config name under experiments/ (e.g. avq/attentive_fusion) or a YAML path",
        )
        sp.add_argument("overrides", nargs="*", help="key=value config overrides")
        sp.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        sp.add_argument(
            "--overlay",
            action="append",
            default=[],
            metavar="NAME",
            help="merge another config file after the experiment (repeatable), e.g. saliency/_cpu",
        )
        sp.add_argument("--list", action="store_true", help="list the available experiments and exit")
        return sp

    exp_cmd("train", "Fit, then test the best checkpoint; prints test metrics and writes a run directory.")
    exp_cmd("test", "Test a checkpoint: avlab test EXPERIMENT ckpt_path=PATH.")
    exp_cmd(
        "predict",
        "Apply a trained model to new media: avlab predict EXPERIMENT ckpt_path=PATH input=... "
        "(avq: reference=REF distorted=DIST).",
    )
    feats = exp_cmd(
        "features",
        "Extract and cache features for a dataset: avlab features EXPERIMENT|TASK [key=value ...].",
    )
    del feats

    data = sub.add_parser("data", help="Demo datasets and dataset checks.")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    demo = dsub.add_parser("demo", help="Write a task's demo dataset, in the real on-disk format, to DIR.")
    demo.add_argument("task", help="avq, yt8m, saliency or unqa")
    demo.add_argument("dir", type=Path)
    demo.add_argument(
        "--size", default="small", help="small (default, used by `make demo`) or tiny (used by tests)"
    )
    check = dsub.add_parser("check", help="Validate a dataset folder and report every problem.")
    check.add_argument("experiment")
    check.add_argument("overrides", nargs="*")

    sweep = sub.add_parser(
        "sweep",
        help=(
            "Run or resume an Optuna study: "
            "avlab sweep SWEEP [--trials N] [--storage URL] [--study NAME] [key=value ...]."
        ),
        description="Run or resume an Optuna hyper-parameter study over an experiment (docs/sweeps.md).",
        epilog=(
            "key=value overrides apply to every trial. "
            "Example: avlab sweep avq/table2 --trials 6 cv.folds=3 "
            "trainer.max_epochs=20 logger.wandb.mode=disabled"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("sweep", nargs="?", help="search space under sweeps/ (e.g. avq/table2) or a YAML path")
    sweep.add_argument("overrides", nargs="*", help="key=value config overrides applied to every trial")
    sweep.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials to run now (default: the sweep file's `trials`); a resumed study gets this many more",
    )
    sweep.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///RUN_ROOT/sweeps/STUDY/study.db); "
        "postgresql://USER@HOST:PORT/DB lets several workers share one study",
    )
    sweep.add_argument(
        "--study", default=None, help="study name (default: the sweep's name); an existing study is resumed"
    )
    sweep.add_argument(
        "--pruner",
        choices=["median", "hyperband", "percentile", "successive_halving", "none"],
        default=None,
        help="replace the sweep file's pruner (default arguments)",
    )
    sweep.add_argument("--list", action="store_true", help="list the available sweeps and exit")

    cmp_ = sub.add_parser(
        "compare", help="Side-by-side table of several runs' metrics.json and config differences."
    )
    cmp_.add_argument("run_dirs", nargs="+", type=Path)
    cmp_.add_argument(
        "--metrics",
        default="test/",
        help="comma-separated metric names, or prefixes ending in / (default test/)",
    )
    cmp_.add_argument("--no-config-diff", action="store_true", help="omit the table of config differences")
    from avlab.tables import add_parser as add_table_parser

    add_table_parser(sub)  # `avlab table`: a paper table, paper vs avlab (avlab/tables/)
    from avlab.cache_admin import add_parser as add_cache_parser

    add_cache_parser(sub)  # `avlab cache list|prune` (avlab/cache_admin.py)
    _quiet_anywhere(p)
    return p


def _quiet_anywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--quiet`` after a subcommand too (``avlab train EXP --quiet``), not only before it.

    SUPPRESS as the subcommand's default keeps a ``--quiet`` given before the subcommand.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                child.add_argument(
                    "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
                )
                _quiet_anywhere(child)


def _print_metrics(
    title: str, metrics: dict[str, float], per_split: list[dict[str, float]] | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    if per_split and len(per_split) > 1:
        for i in range(len(per_split)):
            table.add_column(f"split {i}", justify="right")
        table.add_column("mean ± std", justify="right")
        for key in sorted(k for k in metrics if not k.endswith("_std")):
            cells = [f"{m.get(key, float('nan')):.4f}" for m in per_split]
            table.add_row(key, *cells, f"{metrics[key]:.4f} ± {metrics.get(key + '_std', 0.0):.4f}")
    else:
        table.add_column("value", justify="right")
        for key, value in sorted(metrics.items()):
            table.add_row(key, f"{value:.4f}")
    Console().print(table)


def _task_datamodule(task: str) -> Any:
    from avlab.config import _compose, experiments_root
    from avlab.instantiate import resolve_target

    base = experiments_root() / task / "_base.yaml"
    if not base.is_file():
        tasks = sorted(p.name for p in experiments_root().iterdir() if (p / "_base.yaml").is_file())
        from avlab.errors import did_you_mean

        raise ConfigError(f"unknown task `{task}`.{did_you_mean(task, tasks)} Tasks: {', '.join(tasks)}")
    node = _compose(base).get("data")
    return resolve_target(node["_target_"], where=f"{task}/_base.yaml data._target_")


def _quiet_known_warnings() -> None:
    """Silence third-party warnings that say nothing actionable to an avlab user."""
    import warnings

    for pattern in (
        r".*isinstance\(treespec, LeafSpec\).*",  # Lightning vs newer torch.utils._pytree
        r".*smaller than the logging interval.*",  # tiny demo datasets have few batches
        r".*does not have many workers.*",  # num_workers=0 is deliberate on CPU demos
    ):
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    class _DropAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # parse_known_args: overrides may also come after options (`EXP --overlay X key=value`), where
    # argparse no longer assigns them to the positional list.
    args, extra = parser.parse_known_args(argv)
    stray = [t for t in extra if t.startswith("-") or "=" not in t or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    _quiet_known_warnings()
    if args.quiet:
        from avlab.progress import set_quiet

        set_quiet(True)  # through the environment, so DDP ranks and sweep trials are quiet too
    try:
        return _dispatch(args, parser)
    except AvlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from avlab import config as config_mod

    if args.command in ("train", "test", "predict", "features"):
        if args.list:
            print("\n".join(config_mod.list_experiments()))
            return 0
        if not args.experiment:
            parser.error(f"{args.command} needs an EXPERIMENT (see `avlab {args.command} --list`)")
        cfg, inputs = experiment_config(args.command, args.experiment, args.overrides, args.overlay)
        if args.print_config:
            print(config_mod.to_yaml(cfg))
            return 0
        return _run_experiment_command(args.command, cfg, inputs)
    if args.command == "data":
        if args.data_command == "demo":
            dm_cls = _task_datamodule(args.task)
            out = dm_cls.build_demo(Path(args.dir), size=args.size)
            print(f"demo dataset for {args.task} written to {out}")
            return 0
        if args.data_command == "check":
            from avlab.instantiate import instantiate

            cfg = config_mod.load_experiment(args.experiment, args.overrides)
            dm = instantiate(cfg.data)
            problems = dm.check()
            for key, value in dm.describe().items():
                print(f"{key}: {value}")
            if problems:
                print(f"{len(problems)} problem(s) found:")
                for prob in problems:
                    print(f"  - {prob}")
                return 1
            print("no problems found")
            return 0
        parser.parse_args(["data", "--help"])
    if args.command == "sweep":
        from avlab import sweep as sweep_mod

        if args.list:
            print("\n".join(sweep_mod.list_sweeps()))
            return 0
        if not args.sweep:
            parser.error("sweep needs a SWEEP (see `avlab sweep --list`)")
        result = sweep_mod.run_sweep(
            args.sweep,
            trials=args.trials,
            storage=args.storage,
            study_name=args.study,
            overrides=args.overrides,
            pruner=args.pruner,
        )
        return 130 if result is not None and result.interrupted else 0
    if args.command == "cache":
        from avlab import cache_admin

        return cache_admin.main(args)
    if args.command == "table":
        from avlab import tables

        return tables.main(args)
    if args.command == "compare":
        from avlab.compare import compare_runs

        print(compare_runs(args.run_dirs, metrics=args.metrics, config_diff=not args.no_config_diff))
        return 0
    return 0


def _run_experiment_command(command: str, cfg: Any, inputs: dict[str, str]) -> int:
    from avlab import rundir, runner

    if command == "train":
        result = runner.train(cfg)
        if rundir.is_rank_zero():
            _print_metrics(f"{cfg.experiment}: test metrics", result.metrics, result.per_split)
            for line in result.summary_lines:
                print(line)
            print(f"run directory: {result.run_dir}")
        return 0
    if command == "test":
        result = runner.test(cfg)
        if rundir.is_rank_zero():
            _print_metrics(f"{cfg.experiment}: test metrics ({cfg.ckpt_path})", result.metrics)
            for line in result.summary_lines:
                print(line)
            print(f"run directory: {result.run_dir}")
        return 0
    if command == "predict":
        run_dir, result = runner.predict(cfg, inputs)
        print(json.dumps(result, indent=2, default=str))
        print(f"run directory: {run_dir}")
        return 0
    if command == "features":
        from avlab.datamodules.base import AvlabDataModule
        from avlab.instantiate import instantiate

        dm = instantiate(cfg.data)
        if not isinstance(dm, AvlabDataModule):
            raise ConfigError(
                f"`data._target_` builds {type(dm).__name__}, not an avlab DataModule: nothing to extract"
            )
        # The DataModule fills the same cache that training reads (its prepare_data calls this too).
        summary = dm.extract_features(progress=True)
        print(json.dumps(summary, indent=2, default=str))
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The ``lightning-meta`` command: Lightning's own CLI, so every argument is typed and overridable.

Every run shows a :class:`~lightning_meta.callbacks.MetaProgressBar` (meta-steps of the total, the ETA, a labelled
line while held-out tasks train) and ends with a :class:`~lightning_meta.callbacks.RunSummary`; it prints nothing a
user cannot act on (``--verbose`` shows Lightning's tips and the warnings of the libraries again).

Example (shell)::

    lightning-meta --help                                  # the recipes, one command each
    lightning-meta fit --config recipes/omniglot/leap.yaml
    lightning-meta fit --config recipes/omniglot/leap.yaml --data.max_meta_steps=50 --data.batch_size=10
    lightning-meta fit --config recipes/omniglot/leap.yaml --print_config   # the resolved config, then exit
    lightning-meta fit --help                              # every argument
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionYesNo, DefaultHelpFormatter
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_meta.atomic_files import write_atomically
from lightning_meta.callbacks import CheckpointOnSignal, MetaCheckpoint, MetaProgressBar, RunSummary
from lightning_meta.checkpoint_files import load_checkpoint
from lightning_meta.cli_errors import flag_of, run_reporting_errors
from lightning_meta.cli_parse_errors import MetaArgumentParser
from lightning_meta.data import StreamDataModule, TaskDataModule
from lightning_meta.lightning_private import LIGHTNING_MESSAGES, drop_unset_anonymous
from lightning_meta.trainer.checkpoint_io import use_atomic_checkpoints
from lightning_meta.trainer.resume_checks import check_resumed_class, check_weights_fit, keep_configured_values
from lightning_meta.trainer.run_folders import claim_version
from lightning_meta.utils import own_run_dir

RECIPES = """\
Meta-learning recipes for PyTorch Lightning. Run from the repository root; each line is one run:

  lightning-meta fit --config recipes/omniglot/leap.yaml --config recipes/omniglot/quick.yaml     # the main job
  lightning-meta fit --config recipes/omniglot/reptile.yaml --config recipes/omniglot/quick.yaml  # or finetune, scratch
  lightning-meta fit --config recipes/omniglot/maml.yaml --config recipes/omniglot/quick.yaml     # or fomaml.yaml
  lightning-meta fit --config recipes/vision/leap.yaml --config recipes/vision/quick.yaml    # or finetune, scratch
  lightning-meta fit --config recipes/atari/quick.yaml           # needs pip install -e ".[atari]"; leap.yaml: GPU
  lightning-meta fit --config recipes/dynamical_lm/quick.yaml    # gpu.yaml: one GPU
  lightning-meta fit --config recipes/learned_optimizer/quadratics.yaml

Without quick.yaml the Omniglot and vision configs run at the papers' sizes (for GPUs). Every argument is typed and
overridable (--data.max_meta_steps=100 --data.inner_steps=50). Runs are quiet and end with a summary of the results:

  lightning-meta fit --help                         # every argument of fit (long)
  lightning-meta fit --config FILE --print_config   # a recipe's resolved config
  lightning-meta fit --config FILE --verbose        # with Lightning's tips and the libraries' warnings"""


class RecipesHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the description's lines kept as written (commands must stay whole)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def wandb_offline_without_key() -> None:
    """``--trainer.logger=WandbLogger`` works out of the box: without an API key, W&B runs offline (sync later)."""
    netrc = Path.home() / ".netrc"
    logged_in = "WANDB_API_KEY" in os.environ or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if not logged_in and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
        rank_zero_info("lightning-meta: no W&B API key found; W&B runs offline. `wandb sync` uploads later.")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def quiet() -> None:
    """Hide what a user of the command cannot act on: Lightning's tips (for its litlogger and litmodels services)
    and the ``FutureWarning`` that Lightning 2.6's own data loading raises through torch's ``LeafSpec``."""
    LIGHTNING_MESSAGES.addFilter(_not_a_tip)  # once: a logger keeps a filter only once
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


class ConfigToLoggers(SaveConfigCallback):
    """Save the run's full config beside the logs, as Lightning does, and log it to every logger (W&B's run config).
    Where the logger's folder is not the run's own (W&B: Lightning writes ``config.yaml`` into the ``save_dir`` that
    every run shares), a copy goes into the run's folder too, beside its checkpoints and ``summary.csv``."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # process 0 only
        config = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
        shared = trainer.loggers and not isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger))
        if shared:  # Lightning wrote it into the save_dir (not trainer.log_dir here: it broadcasts; this is process 0)
            write_atomically(own_run_dir(trainer) / self.config_filename, lambda file: file.write(config.encode()))


class MetaCLI(LightningCLI):
    """LightningCLI whose ``data`` is a :class:`TaskDataModule` (the default: its ``class_path`` may be left out) or
    any other :class:`StreamDataModule` named by ``class_path`` (e.g. ``lightning_meta.families.AtariDataModule``).

    Every Trainer it builds gets a :class:`~lightning_meta.callbacks.MetaProgressBar` (unless the progress bar is off
    or another one is configured), a :class:`~lightning_meta.callbacks.MetaCheckpoint` (unless checkpointing is off
    or a checkpoint callback is configured), a :class:`~lightning_meta.callbacks.RunSummary` and a
    :class:`~lightning_meta.callbacks.CheckpointOnSignal` (SIGTERM or SIGINT: saved, the command that resumes, exit
    status 143 or 130); checkpoints are written atomically
    (:class:`~lightning_meta.trainer.checkpoint_io.AtomicCheckpointIO`) and each logger's version folder is claimed
    before fit (:func:`~lightning_meta.trainer.run_folders.claim_version`),
    so two runs with one output folder never mix. ``--verbose`` lets Lightning's tips and the libraries' warnings
    through."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self.command_line = None if isinstance(given, dict) else list(sys.argv[1:] if given is None else given)
        self.resumed: tuple[str, dict[str, Any], Any] | None = None  # --ckpt_path, its checkpoint, the parsed model
        self.kept: list[tuple[str, Any, Any]] = []  # model arguments configured otherwise than the checkpoint says
        self.model_base: type[L.LightningModule] = kwargs.get("model_class") or L.LightningModule
        super().__init__(*args, **kwargs)

    def _chosen(self, config: Any, key: str, default: Any) -> Any:
        """``key`` of the running subcommand's config (of the whole config without a subcommand)."""
        section = config.get(self.subcommand) if self.subcommand else config
        return section.get(key, default) if section is not None else default

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, without the ``verbose`` argument of ``validate`` and ``test``: ``--verbose`` is
        ours (their results are printed as by default)."""
        return {name: skip | {"verbose"} for name, skip in LightningCLI.subcommands().items()}

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self.model_base, "model", subclass_mode=self.subclass_mode_model)
        parser.add_subclass_arguments((TaskDataModule, StreamDataModule), "data", fail_untyped=False, required=True)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check that ``--ckpt_path`` names a readable checkpoint: a truncated or foreign file fails here
        with a message naming it (:mod:`lightning_meta.checkpoint_files`), before Lightning reads it; and that it is
        a checkpoint of the configured model class (:mod:`lightning_meta.trainer.resume_checks`)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or path in ("last", "best", "hpc", "registry") or str(path).startswith("registry:"):
            return  # Lightning's keywords: Lightning finds and reads the file
        if "://" not in str(path):  # remote files are Lightning's to read
            checkpoint = load_checkpoint(path)
            model = self.config[subcommand].get("model")
            if model is not None:
                check_resumed_class(checkpoint, model, path)
                self.resumed = (str(path), checkpoint, model.clone())

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--verbose",
            action=ActionYesNo,
            default=False,
            help="Show Lightning's tips and the warnings of the libraries (hidden by default: nothing to act on).",
        )

    def before_instantiate_classes(self) -> None:
        if not self._chosen(self.config, "verbose", default=False):
            quiet()
        if self.resumed is not None and self.subcommand is not None:
            path, _, written = self.resumed
            self.kept = keep_configured_values(written, self.config[self.subcommand]["model"])
            for name, configured, saved in self.kept:
                if getattr(rank_zero_only, "rank", 0) == 0:
                    print(f"lightning-meta: {self._model_flag(name)}={configured} replaces the checkpoint's "
                          f"{name}={saved} ({path})", file=sys.stderr)

    def _model_flag(self, name: str) -> str:
        """The model argument's flag as the user wrote it (``--model.init_args.lr`` or ``--model.lr``)."""
        return flag_of(["model", name], self.command_line or [])

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.resumed is not None:
            path, checkpoint, _ = self.resumed
            kept = [f"{self._model_flag(name)}={value} (the checkpoint's {saved})" for name, value, saved in self.kept]
            check_weights_fit(checkpoint, self.model, path, ", ".join(kept))
        if self.subcommand is not None:
            use_atomic_checkpoints(self.trainer)
            if getattr(rank_zero_only, "rank", 0) == 0:  # the process that starts the run; DDP's others take its folder
                for logger in self.trainer.loggers:
                    claim_version(logger)
        wandb = [logger for logger in self.trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb:
            wandb_offline_without_key()
        for logger in wandb:
            drop_unset_anonymous(logger)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._chosen(self.config_init, "trainer", default={})
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        defaults: list[L.Callback] = []
        if not any(isinstance(c, RunSummary) for c in configured):
            defaults.append(RunSummary())
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            defaults.append(MetaProgressBar())
        if config.get("enable_checkpointing") is not False and not any(isinstance(c, Checkpoint) for c in configured):
            defaults.append(MetaCheckpoint())  # Lightning's default checkpoint, its files named in meta-steps
        if not any(isinstance(c, CheckpointOnSignal) for c in configured):
            command = None if self.command_line is None else ["lightning-meta", *self.command_line]
            defaults.append(CheckpointOnSignal(resume_command=command))
        self.trainer_defaults["callbacks"] = defaults
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> MetaCLI:
    """Run ``lightning-meta``; ``args`` replaces ``sys.argv[1:]`` (handy in notebooks, sweeps and tests). What quiet
    runs hide is hidden during this call only."""
    with warnings.catch_warnings():
        if args is not None:  # Lightning warns when a script with arguments of its own passes args, as sweeps do
            warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
        try:
            return MetaCLI(
                datamodule_class=TaskDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=ConfigToLoggers,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"description": RECIPES, "formatter_class": RecipesHelpFormatter},
                parser_class=MetaArgumentParser,  # parse errors in one line (lightning_meta.cli_parse_errors)
                args=args,
                run=run,
            )
        finally:
            LIGHTNING_MESSAGES.removeFilter(_not_a_tip)


def command() -> None:
    """The console script: runs :func:`main`; exits with status 0, or prints a bad value's key, value and rule in one
    line and exits with status 1 (:mod:`lightning_meta.cli_errors`; ``--debug`` shows the traceback), or, stopped by
    SIGTERM or SIGINT, exits with status 143 or 130 once the run is saved."""
    sys.exit(run_reporting_errors(main, sys.argv))


if __name__ == "__main__":
    command()

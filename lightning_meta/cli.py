"""The ``lightning-meta`` command: Lightning's own CLI, so every argument is typed and overridable.

Example (shell)::

    lightning-meta fit --config recipes/omniglot/leap.yaml
    lightning-meta fit --config recipes/omniglot/leap.yaml --trainer.max_steps=2000 --data.batch_size=10
    lightning-meta fit --help
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lightning_meta.checkpoint_files import load_checkpoint
from lightning_meta.cli_errors import run_reporting_errors
from lightning_meta.tasks import StreamDataModule, TaskDataModule


def wandb_offline_without_key() -> None:
    """``--trainer.logger=WandbLogger`` works out of the box: without an API key, W&B runs offline (sync later)."""
    netrc = Path.home() / ".netrc"
    logged_in = "WANDB_API_KEY" in os.environ or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if not logged_in and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
        rank_zero_info("lightning-meta: no W&B API key found; W&B (if used) runs offline. `wandb sync` uploads later.")


class ConfigToLoggers(SaveConfigCallback):
    """Save the run's full config beside the logs, as Lightning does, and log it to every logger (W&B's run config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class MetaCLI(LightningCLI):
    """LightningCLI whose ``data`` is a :class:`TaskDataModule` (the default: its ``class_path`` may be left out) or
    any other :class:`StreamDataModule` named by ``class_path`` (e.g. ``lightning_meta.tasks.AtariDataModule``)."""

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_subclass_arguments((TaskDataModule, StreamDataModule), "data", fail_untyped=False, required=True)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check that ``--ckpt_path`` names a readable checkpoint: a truncated or foreign file fails here
        with a message naming it (:mod:`lightning_meta.checkpoint_files`), before Lightning reads it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or path in ("last", "best", "hpc", "registry") or str(path).startswith("registry:"):
            return  # Lightning's keywords: Lightning finds and reads the file
        if "://" not in str(path):  # remote files are Lightning's to read
            load_checkpoint(path)


def main(args: list[str] | None = None, run: bool = True) -> MetaCLI:
    """Run ``lightning-meta``; ``args`` replaces ``sys.argv[1:]`` (handy in notebooks and tests)."""
    wandb_offline_without_key()
    return MetaCLI(
        datamodule_class=TaskDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=ConfigToLoggers,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def command() -> None:
    """The console script: runs :func:`main`; exits with status 0, or prints a bad value's key, value and rule in one
    line and exits with status 1 (:mod:`lightning_meta.cli_errors`; ``--debug`` shows the traceback)."""
    sys.exit(run_reporting_errors(main, sys.argv))


if __name__ == "__main__":
    command()

"""The ``lightning-meta`` command: Lightning's own CLI, so every argument is typed and overridable.

Example (shell)::

    lightning-meta fit --config recipes/omniglot/leap.yaml
    lightning-meta fit --config recipes/omniglot/leap.yaml --trainer.max_steps=2000 --data.batch_size=10
    lightning-meta fit --help
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

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
    """The console script: runs :func:`main` and exits with status 0 (``main`` returns the CLI object)."""
    main()


if __name__ == "__main__":
    command()

"""The ``lightning-meta`` command: Lightning's own CLI, so every argument is typed and overridable.

Example (shell)::

    lightning-meta fit --config recipes/omniglot/leap.yaml
    lightning-meta fit --config recipes/omniglot/leap.yaml --trainer.max_steps=2000 --data.batch_size=10
    lightning-meta fit --help
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lightning_meta.tasks import TaskDataModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run ``lightning-meta``; ``args`` replaces ``sys.argv[1:]`` (handy in notebooks and tests)."""
    return LightningCLI(
        datamodule_class=TaskDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()

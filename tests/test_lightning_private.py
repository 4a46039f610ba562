"""The private parts of Lightning that ``lightning_meta.lightning_private`` reads or sets, checked against the
installed Lightning: an upgrade that moves them fails here, by name, not quietly in a run."""

import lightning as L

from lightning_meta.lightning_private import DEFAULT_MAX_EPOCHS, set_step_limit, uses_distributed_sampler


def test_the_step_limit_is_the_trainers_max_steps_and_lifts_the_default_epoch_limit():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit_loop.max_epochs = DEFAULT_MAX_EPOCHS  # what Lightning sets when given no limit at all
    set_step_limit(trainer, 123)
    assert trainer.max_steps == 123 and trainer.fit_loop.epoch_loop.max_steps == 123 and trainer.max_epochs == -1
    chosen = L.Trainer(max_epochs=7, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    set_step_limit(chosen, 5)
    assert chosen.max_steps == 5 and chosen.max_epochs == 7  # an epoch limit of the user's is kept


def test_the_distributed_sampler_setting_is_read_where_lightning_keeps_it():
    connector = L.Trainer(logger=False, use_distributed_sampler=False)._accelerator_connector
    assert hasattr(connector, "is_distributed") and connector.use_distributed_sampler is False
    assert not uses_distributed_sampler(L.Trainer(logger=False))  # one process: nothing to wrap
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert uses_distributed_sampler(ddp)
    assert not uses_distributed_sampler(L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                                                  use_distributed_sampler=False))

"""The private parts of Lightning that ``lightning_meta.lightning_private`` reads or sets, checked against the
installed Lightning: an upgrade that moves them fails here, by name, not quietly in a run."""

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_module
from torch.utils.data import DataLoader

from lightning_meta.lightning_private import (
    DEFAULT_MAX_EPOCHS,
    LIGHTNING_MESSAGES,
    chosen_version,
    drop_unset_anonymous,
    muted_logging,
    next_version,
    set_step_limit,
    set_version,
    strategy_training_step,
    uses_distributed_sampler,
)


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


class _Regression(L.LightningModule):
    """A module nobody here wrote for this test's sake: one linear map, a squared error, one logged value."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = (self.layer(batch) ** 2).mean()
        self.log("seen", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs):
    return L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def test_the_fit_loop_computes_each_loss_with_the_strategys_training_step():
    module, calls = _Regression(), []
    trainer = _trainer()

    class Replace(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            def step(batch, batch_idx, *args, **kwargs):
                calls.append(batch_idx)
                return (pl_module.layer(batch) ** 2).mean() * 0  # a loss the module's own step would not give
            self.scope = strategy_training_step(trainer.strategy, step)
            self.scope.__enter__()

        def on_fit_end(self, trainer, pl_module):
            self.scope.__exit__(None, None, None)

    trainer.callbacks.append(Replace())
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, DataLoader(torch.randn(12, 3), batch_size=4))
    assert calls == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # zero loss, no step moved them
    assert "training_step" not in vars(trainer.strategy)  # the class's method is back


def test_muted_logging_collects_or_drops_what_training_step_logs_and_restores_log():
    collected = {}

    class Collect:
        def log(self, name, value, **options):
            collected[name] = value

    module = _Regression()
    with muted_logging(module, into=Collect()):
        loss = module.training_step(torch.ones(2, 3), 0)
    assert collected == {"seen": loss}
    assert "log" not in vars(module) and "log_dict" not in vars(module)

    class Muted(_Regression):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            with muted_logging(self):
                self.log("after", 1.0)  # would be in callback_metrics if the mute did not take

    trainer = _trainer()
    trainer.fit(Muted(), DataLoader(torch.randn(12, 3), batch_size=4))
    assert "seen" in trainer.callback_metrics and "after" not in trainer.callback_metrics


def test_lightnings_messages_go_through_the_logger_the_library_filters():
    assert LIGHTNING_MESSAGES is rank_zero_module.log


def test_a_loggers_version_is_read_and_set_where_lightning_keeps_it(tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    logger = CSVLogger(tmp_path)
    assert chosen_version(logger) is None and next_version(logger) == 1
    set_version(logger, 5)
    assert logger.version == 5 and chosen_version(CSVLogger(tmp_path, version=3)) == 3


def test_wandb_init_arguments_lose_an_unset_anonymous(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=tmp_path, offline=True)
    assert "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None
    drop_unset_anonymous(logger)
    assert "anonymous" not in logger._wandb_init
    chosen = WandbLogger(save_dir=tmp_path, offline=True, anonymous=True)
    drop_unset_anonymous(chosen)
    assert chosen._wandb_init["anonymous"] == "allow"

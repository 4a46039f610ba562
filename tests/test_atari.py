"""The Atari recipe: A2C rollouts on real ALE games, Leap on the encoder, the held-out evaluation, bad input."""

import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import wandb

from lightning_meta import Leap, MetaInit
from lightning_meta.cli import main
from lightning_meta.families import AtariDataModule
from lightning_meta.families.rollouts import Rollout, RolloutCollector
from lightning_meta.engine import LeapRule
from lightning_meta.families import AtariGames
from lightning_meta.families.atari import make_vector_env
from lightning_meta.models import AtariActorCritic
from lightning_meta.models.actor_critic import n_step_returns

ROOT = Path(__file__).parents[1]


def test_n_step_returns_worked_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    dones = torch.tensor([[False, False], [True, False], [False, False]])
    bootstrap = torch.tensor([10.0, 20.0])
    returns = n_step_returns(rewards, dones, bootstrap, discount=0.5)
    # env 0: R2 = 1 + 0.5 * 10 = 6; R1 = 0 (episode ends: no bootstrap); R0 = 1 + 0.5 * 0 = 1
    # env 1: R2 = 0 + 0.5 * 20 = 10; R1 = 1 + 0.5 * 10 = 6; R0 = 0 + 0.5 * 6 = 3
    assert torch.equal(returns, torch.tensor([[1.0, 3.0], [0.0, 6.0], [6.0, 10.0]]))


def test_default_pool_has_at_most_10_actions_and_holds_out_breakout_and_space_invaders():
    games = AtariGames()
    assert games.games("test") == ["Breakout", "SpaceInvaders"]
    assert not set(games.games("train")) & set(games.games("test"))
    actions = {game: games.num_actions(game) for game in games.games("train") + games.games("test")}
    assert max(actions.values()) <= 10 and actions["Breakout"] == 4 and actions["Pong"] == 6
    with pytest.raises(ValueError, match="Alien has 18 actions"):
        AtariGames(train=["Alien"]).num_actions("Alien")
    with pytest.raises(ValueError, match="both meta-training and held-out"):
        AtariGames(train=["Pong", "Breakout"])


def test_unknown_game_says_what_exists():
    with pytest.raises(ValueError, match="unknown Atari game 'Breakot'.*did you mean Breakout"):
        AtariGames().num_actions("Breakot")


def test_missing_rom_says_where_roms_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("ALE_ROMS_DIR", str(tmp_path))  # a ROM folder without ROMs
    with pytest.raises(FileNotFoundError, match=r"no ROM for Atari game 'Pong' \(pong.bin\).*ALE_ROMS_DIR"):
        RolloutCollector(AtariGames(), num_envs=1)._start_task(Rollout(0, "Pong", 6))


def test_missing_packages_name_the_extra(monkeypatch):
    for name in ("gymnasium", "ale_py", "cv2"):
        monkeypatch.setitem(sys.modules, name, None)  # `import gymnasium` now raises ImportError
    with pytest.raises(ImportError, match=r"gymnasium is missing\): run `pip install -e \".\[atari\]\"`"):
        make_vector_env("Pong", num_envs=1)
    for name in [name for name in sys.modules if name.startswith("lightning_meta")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh below, without the Atari packages
    for name in ("lightning_meta", "lightning_meta.models", "lightning_meta.data", "lightning_meta.families",
                 "lightning_meta.cli"):
        importlib.import_module(name)


def test_reported_returns_match_an_independent_count_of_raw_rewards():
    collector = RolloutCollector(AtariGames(), num_envs=2, unroll=5, max_episode_steps=100, seed=3)
    generator = torch.Generator().manual_seed(0)

    def random_policy(observations):
        return torch.randint(0, 6, (observations.shape[0],), generator=generator)

    rollouts = [Rollout(0, "Pong", 6, source=collector) for _ in range(60)]  # 600 environment steps
    for rollout in rollouts:
        rollout.collect(random_policy, torch.device("cpu"))
    collector.close()
    rewards = torch.cat([r.rewards for r in rollouts])  # [300, 2]
    dones = torch.cat([r.dones for r in rollouts])
    counted, running = [], [0.0, 0.0]
    for step in range(rewards.shape[0]):
        for env in range(2):
            running[env] += float(rewards[step, env])
            if dones[step, env]:
                counted.append(running[env])
                running[env] = 0.0
    reported = [value for r in rollouts for value in r.episode_returns]
    assert len(counted) >= 4 and any(counted)  # truncated at 100 steps: several episodes, points lost
    assert reported == counted
    assert all(length <= 100 for r in rollouts for length in r.episode_lengths)
    assert rollouts[-1].env_steps == 600
    assert all(r.observations.dtype == torch.uint8 and r.observations.shape == (5, 2, 4, 84, 84) for r in rollouts)


def test_training_step_is_a_pure_function_of_parameters_and_rollout():
    model = AtariActorCritic()
    collector = RolloutCollector(AtariGames(), num_envs=2, unroll=5)
    rollout = Rollout(0, "Pong", 6, source=collector)
    with pytest.raises(RuntimeError, match="never played"):
        model.training_step(rollout, 0)
    model.start_task(0, 6)
    rollout.collect(model.act, model.device)
    steps = collector._env_steps
    first, second = model.training_step(rollout, 0), model.training_step(rollout, 0)
    assert torch.equal(first, second) and collector._env_steps == steps  # no environment step on a re-run
    rollout.collect(model.act, model.device)  # a played rollout is not played again
    assert collector._env_steps == steps
    with torch.no_grad():
        model.value.bias += 1.0  # the bootstrap is the value of next_observations at the current parameters
    assert not torch.equal(model.training_step(rollout, 0), first)
    collector.close()


class RecordingLeapRule(LeapRule):
    """Leap's rule, keeping theta_0, theta_K and the meta-gradient of every task."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tasks = []

    def start(self, theta_0, live):
        super().start(theta_0, live)
        self.theta_0 = [p.detach().clone() for p in theta_0]

    def end(self, live, final_loss):
        gradient = super().end(live, final_loss)
        self.tasks.append((self.theta_0, [p.detach().clone() for p in live], [g.clone() for g in gradient]))
        return gradient


@pytest.mark.parametrize("loss", [False, True])
def test_leap_meta_learns_the_encoder_of_an_actor_critic_end_to_end(loss):
    L.seed_everything(0)
    data = AtariDataModule(AtariGames(train=["Pong", "Freeway"]), inner_steps=10, meta_batch_size=2, num_envs=2,
                           max_episode_steps=15)  # fmt: skip
    model = AtariActorCritic(cpu_threads=1)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    leap = MetaInit(RecordingLeapRule(p=2, loss=loss), include="encoder", meta_lr=0.1)
    trainer = L.Trainer(max_steps=20, callbacks=[leap], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)  # 20 updates x 5 steps x 2 games = 200 environment steps
    encoder = [name for name, _ in model.named_parameters() if name.startswith("encoder.")]
    assert leap.names == encoder and len(leap.rule.tasks) == 2 and leap.meta_steps == 1
    for theta_0, theta_k, gradient in leap.rule.tasks:
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in gradient)
        assert [g.shape for g in gradient] == [model.get_parameter(name).shape for name in encoder]
        if not loss:  # p = 2 without the loss term telescopes to -2 (theta_K - theta_0)
            for g, a, b in zip(gradient, theta_0, theta_k):
                torch.testing.assert_close(g, -2 * (b - a), rtol=1e-4, atol=1e-6)
    mean = [sum(task[2][i] for task in leap.rule.tasks) / 2 for i in range(len(encoder))]
    for name, g in zip(encoder, mean):  # one SGD meta-step of lr 0.1 from the initial weights
        torch.testing.assert_close(model.get_parameter(name).detach(), start[name] - 0.1 * g, rtol=1e-4, atol=1e-6)
    assert "train/episode_return" in trainer.callback_metrics


def test_quick_recipe_end_to_end_with_wandb(tmp_path):
    main([
        "fit", "--config", str(ROOT / "recipes" / "atari" / "quick.yaml"),
        "--data.init_args.max_meta_steps=1", f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.inner_steps=2", "--data.init_args.num_envs=2", "--data.init_args.max_episode_steps=10",
        "--trainer.logger=WandbLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.project=lightning-meta-test",
        "--trainer.callbacks.init_args.env_steps=60", "--trainer.callbacks.init_args.seeds=[0, 1]",
        "--trainer.callbacks.init_args.points=3", f"--trainer.callbacks.init_args.plot_path={tmp_path}/curves.png",
    ])  # fmt: skip
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    table = json.loads((tmp_path / "curves.json").read_text())
    assert table["env_steps"] == [20.0, 40.0, 60.0] and table["normalization"] == "human"
    for game in ("Breakout", "SpaceInvaders"):
        runs = table["curves"][game]
        assert set(runs) == {"meta-learned encoder", "random encoder"}
        assert all(len(curve) == 3 for curves in runs.values() for curve in curves) and len(runs["random encoder"]) == 2
    wandb.finish()
    # finish() returns once the run's exit is recorded; the service process may still be writing the run's records
    # (under load the .wandb file held only its header). teardown() waits until the service has shut down, with
    # every file written and closed: what W&B promises.
    wandb.teardown()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list((run / "files" / "media" / "images" / "atari_eval").rglob("learning_curves_*.png"))
    assert b"atari_eval/Breakout/meta-learned_encoder/final_return" in next(run.glob("run-*.wandb")).read_bytes()


def test_paper_scale_config_builds_the_papers_agent():
    cli = main(["--config", str(ROOT / "recipes" / "atari" / "leap.yaml")], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, AtariActorCritic) and isinstance(data, AtariDataModule)
    assert (model.lr, model.eps, model.alpha, model.entropy_cost, model.discount) == (1e-4, 1e-4, 0.99, 0.01, 0.99)
    assert data.settings.unroll == 5 and data.games.games("test") == ["Breakout", "SpaceInvaders"]
    (leap,) = [c for c in cli.trainer.callbacks if isinstance(c, Leap)]
    assert leap.rule.p == 2 and leap.include == "encoder"
    assert cli.config["trainer"]["accelerator"] == "auto"


def process(world_size: int, rank: int, callbacks: list) -> SimpleNamespace:
    """What the data module reads of the Trainer of one DDP process, at the start of fit."""
    return SimpleNamespace(
        world_size=world_size, global_rank=rank, callbacks=callbacks, global_step=0, accumulate_grad_batches=1,
        lightning_module=None,
    )


def test_each_ddp_process_plays_the_tasks_its_schedule_gives_it():
    data = AtariDataModule(AtariGames(train=["Pong", "Freeway", "Skiing"]), inner_steps=2, meta_batch_size=4)
    data.setup("fit")
    streams = []
    for rank in (0, 1):  # task-parallel: process r trains positions r, r + 2 of each meta-batch of 4
        data.trainer = process(world_size=2, rank=rank, callbacks=[Leap()])  # a meta-learner: parallel="tasks"
        stream = iter(data.train_dataloader())
        streams.append([next(stream) for _ in range(8)])
    assert [r.task for r in streams[0]] == [0, 0, 2, 2, 4, 4, 6, 6]
    assert [r.task for r in streams[1]] == [1, 1, 3, 3, 5, 5, 7, 7]
    data.trainer = process(world_size=1, rank=0, callbacks=[])  # one process plays every task of the stream in order
    single = iter(data.train_dataloader())
    game_of = {rollout.task: rollout.game for rollout in (next(single) for _ in range(16))}
    for rollout in streams[0] + streams[1]:  # a task's game does not depend on the process that plays it
        assert rollout.game == game_of[rollout.task]
    pool = ["Pong", "Freeway", "Skiing"]
    passes = [sorted(game_of[t] for t in range(start, start + 3)) for start in (0, 3)]
    assert passes == [sorted(pool)] * 2  # every game once per pass over the pool
    data.teardown("fit")

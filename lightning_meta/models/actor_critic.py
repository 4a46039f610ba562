"""An advantage actor-critic (A2C) for Atari as an ordinary LightningModule: the Leap paper's hardest setting.

The encoder is Mnih et al. (2013)'s: conv 8x8 stride 4 (16 channels), conv 4x4 stride 2 (32), linear 256, ReLUs.
Linear policy and value heads sit on top. Each game is a task with its own action space: the heads are re-drawn at
the start of every task and the policy uses the first ``num_actions`` outputs of its head, so a meta-learner shares
the encoder only (``Leap(include="encoder")``).

Examples:
    >>> import torch
    >>> from lightning_meta.models import AtariActorCritic
    >>> model = AtariActorCritic()
    >>> logits, values = model(torch.zeros(3, 4, 84, 84, dtype=torch.uint8))
    >>> logits.shape, values.shape
    (torch.Size([3, 18]), torch.Size([3]))
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from lightning_meta.checkpoint_files import ChecksCheckpointClass
from lightning_meta.families.rollouts import Rollout
from lightning_meta.validation import check_range


def n_step_returns(rewards: Tensor, dones: Tensor, bootstrap: Tensor, discount: float) -> Tensor:
    """``R_t = r_t + discount * (1 - done_t) * R_{t+1}`` backwards from ``R_T = bootstrap``; ``[T, N]``."""
    returns = torch.empty_like(rewards)
    following = bootstrap
    for t in reversed(range(rewards.shape[0])):
        following = rewards[t] + discount * following * (~dones[t])
        returns[t] = following
    return returns


class AtariActorCritic(ChecksCheckpointClass, L.LightningModule):
    """A2C on :class:`~lightning_meta.families.rollouts.Rollout` batches, with RMSprop as in the Leap paper.

    The loss of a rollout is ``policy + value_cost * value - entropy_cost * entropy`` with n-step returns of the
    clipped rewards (to [-1, 1]) bootstrapped from the value of the state after the rollout, computed at the current
    parameters (no gradient through it). ``training_step`` is a pure function of the parameters and the batch: the
    rollout is played in ``on_train_batch_start``.

    Args:
        max_actions: outputs of the policy head (18, the full Atari action set, fits every game).
        lr: RMSprop learning rate.
        eps: RMSprop epsilon.
        alpha: RMSprop smoothing constant.
        entropy_cost: weight of the entropy bonus.
        value_cost: weight of the value loss (half the squared advantage).
        discount: discount of the n-step returns.
        seed: seed of the heads drawn at each task start.
        cpu_threads: set torch's CPU threads of the process at ``setup`` (``None``: leave them). 1 is fastest on a
            few shared cores, where acting on a handful of frames spends more time synchronising threads than computing.
    """

    def __init__(
        self,
        max_actions: int = 18,
        lr: float = 1e-4,
        eps: float = 1e-4,
        alpha: float = 0.99,
        entropy_cost: float = 0.01,
        value_cost: float = 0.5,
        discount: float = 0.99,
        seed: int = 0,
        cpu_threads: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, 1, max_actions=max_actions, cpu_threads=cpu_threads)
        check_range(name, 0, strict=True, lr=lr)
        check_range(name, 0, eps=eps, alpha=alpha, entropy_cost=entropy_cost, value_cost=value_cost, discount=discount)
        if alpha > 1 or discount > 1:
            raise ValueError(f"{name}: alpha and discount must be <= 1, got {alpha} and {discount}")
        self.save_hyperparameters()
        self.max_actions = max_actions
        self.lr, self.eps, self.alpha = lr, eps, alpha
        self.entropy_cost, self.value_cost, self.discount = entropy_cost, value_cost, discount
        self.seed = seed
        self.cpu_threads = cpu_threads
        self.encoder = nn.Sequential(
            nn.Conv2d(4, 16, 8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 9 * 9, 256), nn.ReLU(),
        )  # fmt: skip
        self.policy = nn.Linear(256, max_actions)
        self.value = nn.Linear(256, 1)
        self.num_actions = max_actions
        self.active_task: int | None = None  # the task whose heads the module holds
        self.recent_returns: deque[float] = deque(maxlen=10)  # raw returns of the task's last finished episodes

    def setup(self, stage: str) -> None:
        if self.cpu_threads is not None:
            torch.set_num_threads(self.cpu_threads)

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Policy logits over the current game's actions and state values of ``uint8 [B, 4, 84, 84]`` frames."""
        features = self.encoder(observations.float() / 255.0)
        return self.policy(features)[:, : self.num_actions], self.value(features).squeeze(-1)

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Sample actions from the policy."""
        logits, _ = self(observations)
        return Categorical(logits=logits).sample()

    @torch.no_grad()
    def start_task(self, task: int, num_actions: int) -> None:
        """Fresh heads for a new game, drawn from ``(seed, task)``."""
        if num_actions > self.max_actions:
            raise ValueError(f"the game has {num_actions} actions, more than max_actions={self.max_actions}")
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, task % 2**32]).integers(2**62)))
        for head in (self.policy, self.value):
            bound = 1.0 / head.in_features**0.5  # nn.Linear's default initialisation
            for tensor in (head.weight, head.bias):
                tensor.copy_(torch.empty(tensor.shape).uniform_(-bound, bound, generator=generator))
        self.num_actions = num_actions
        self.active_task = task
        self.recent_returns.clear()

    def on_train_batch_start(self, batch: Rollout, batch_idx: int) -> None:
        """Start the batch's task if it is new, play the rollout with the current policy and log the mean raw return of
        the task's last 10 finished episodes."""
        if batch.task != self.active_task:
            self.start_task(batch.task, batch.num_actions)
        batch.collect(self.act, self.device)
        self.recent_returns.extend(batch.episode_returns)
        # logged at every step (Lightning repeats a value's last log at steps that do not log it): NaN until the
        # task's first episode ends
        recent = torch.tensor(self.recent_returns or [math.nan], dtype=torch.float64).mean()
        self.log_dict(
            {"train/episode_return": recent.float(), "train/env_steps": float(batch.env_steps)},
            on_step=True,
            prog_bar=True,
            batch_size=1,
        )

    def training_step(self, batch: Rollout, batch_idx: int) -> Tensor:
        if not batch.collected:
            raise RuntimeError(
                "training_step got a rollout that was never played: AtariActorCritic plays rollouts in "
                "on_train_batch_start; call batch.collect(model.act, device) first when calling training_step directly"
            )
        assert batch.observations is not None and batch.next_observations is not None
        assert batch.actions is not None and batch.rewards is not None and batch.dones is not None
        steps, envs = batch.actions.shape
        everything = torch.cat([batch.observations.flatten(0, 1), batch.next_observations])
        logits, values = self(everything)
        bootstrap = values[steps * envs :].detach()
        logits, values = logits[: steps * envs].view(steps, envs, -1), values[: steps * envs].view(steps, envs)
        returns = n_step_returns(batch.rewards.clamp(-1.0, 1.0), batch.dones, bootstrap, self.discount)
        advantages = returns - values
        distribution = Categorical(logits=logits)
        policy_loss = -(distribution.log_prob(batch.actions) * advantages.detach()).mean()
        value_loss = 0.5 * advantages.square().mean()
        entropy = distribution.entropy().mean()
        loss = policy_loss + self.value_cost * value_loss - self.entropy_cost * entropy
        parts = {"train/policy_loss": policy_loss, "train/value_loss": value_loss, "train/entropy": entropy}
        self.log_dict({"train/loss": loss, **parts}, on_step=True, batch_size=steps * envs)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.lr, eps=self.eps, alpha=self.alpha)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["atari_task"] = (self.active_task, self.num_actions)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.active_task, self.num_actions = checkpoint.get("atari_task", (None, self.max_actions))

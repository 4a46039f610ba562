"""Rollouts: ``unroll`` steps of a vector of games, collected with the model's current policy.

A :class:`Rollout` is the training batch of an actor-critic. The data module hands it out empty, and the module fills
it in its ``on_train_batch_start`` hook, which Lightning calls after every callback's (so a meta-learner has already
loaded theta_0 when a task starts) and after the next batch was prefetched (so the rollout sees the parameters of
this step, not the previous one's). ``training_step`` then only computes the loss from it: re-running it (as Leap
does at theta_K) has no effect on the environments.

Examples:
    >>> import torch
    >>> collector = RolloutCollector(AtariGames(), num_envs=2, unroll=5)
    >>> rollout = Rollout(task=0, game="Breakout", num_actions=4, source=collector)
    >>> rollout.collect(lambda obs: torch.zeros(obs.shape[0], dtype=torch.long), torch.device("cpu"))
    >>> rollout.observations.shape, rollout.next_observations.shape, rollout.rewards.shape
    (torch.Size([5, 2, 4, 84, 84]), torch.Size([2, 4, 84, 84]), torch.Size([5, 2]))
    >>> collector.close()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_meta.families.atari import AtariGames, make_vector_env

Policy = Callable[[Tensor], Tensor]  # uint8 observations [N, 4, 84, 84] -> actions [N]


@dataclass
class Rollout:
    """One batch of experience: ``unroll`` steps of ``num_envs`` copies of a game.

    ``rewards`` are the raw game scores (the loss clips them); ``dones[t]`` marks that step ``t`` ended an episode,
    whose ``observations[t + 1]`` (or ``next_observations``) is already the next episode's first.
    ``episode_returns`` and ``episode_lengths`` are those of the episodes that ended during this rollout (raw score,
    agent steps), and ``env_steps`` counts the agent steps of the task so far, all copies together.
    """

    task: int
    game: str
    num_actions: int
    source: RolloutCollector | None = None
    observations: Tensor | None = None  # uint8 [T, N, 4, 84, 84]
    actions: Tensor | None = None  # long [T, N]
    rewards: Tensor | None = None  # float [T, N]
    dones: Tensor | None = None  # bool [T, N]
    next_observations: Tensor | None = None  # uint8 [N, 4, 84, 84]
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_steps: int = 0

    @property
    def collected(self) -> bool:
        return self.observations is not None

    def collect(self, policy: Policy, device: torch.device) -> None:
        """Play the rollout's steps with ``policy`` (once: a collected rollout stays as it is)."""
        if self.collected:
            return
        if self.source is None:
            raise RuntimeError("this Rollout has no collector to play it (source=None)")
        self.source.collect(self, policy, device)


class RolloutCollector:
    """Plays the games of a task stream: one vector env at a time, switched when the task changes.

    Every task starts from fresh episodes seeded by ``(seed, task)``; the episode in progress when a task ends is
    dropped. Returns are counted on the raw rewards.

    Args:
        games: the task family (to look up action counts and check game names).
        num_envs: copies of the game played in parallel.
        unroll: steps per rollout (n of the n-step returns).
        asynchronous: one process per copy (gymnasium ``AsyncVectorEnv``) instead of all in this process.
        repeat_action_probability: sticky actions (ALE v5's default 0.25; 0 for the deterministic games of 2013).
        max_episode_steps: truncate episodes after this many agent steps (``None``: the ALE's 108000 frames).
        seed: seed of the environments.
    """

    def __init__(
        self,
        games: AtariGames,
        num_envs: int = 16,
        unroll: int = 5,
        asynchronous: bool = False,
        repeat_action_probability: float = 0.25,
        max_episode_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in {"num_envs": num_envs, "unroll": unroll}.items():
            if value < 1:
                raise ValueError(f"RolloutCollector: {name} must be >= 1, got {value}")
        self.games = games
        self.num_envs = num_envs
        self.unroll = unroll
        self.asynchronous = asynchronous
        self.repeat_action_probability = repeat_action_probability
        self.max_episode_steps = max_episode_steps
        self.seed = seed
        self.envs: Any = None
        self.game: str | None = None
        self.task: int | None = None
        self._observations = np.empty(0)
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._env_steps = 0

    def fresh(self, seed: int) -> RolloutCollector:
        """A new collector with the same settings and another seed."""
        return RolloutCollector(
            self.games, self.num_envs, self.unroll, self.asynchronous, self.repeat_action_probability,
            self.max_episode_steps, seed,
        )  # fmt: skip

    def _start_task(self, rollout: Rollout) -> None:
        if rollout.game != self.game:
            self.close()
            self.envs = make_vector_env(
                rollout.game, self.num_envs, self.asynchronous, self.repeat_action_probability, self.max_episode_steps
            )
            self.game = rollout.game
        seed = int(np.random.default_rng([self.seed, rollout.task % 2**32]).integers(2**31))
        self._observations, _ = self.envs.reset(seed=seed)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._env_steps = 0
        self.task = rollout.task

    @torch.no_grad()
    def collect(self, rollout: Rollout, policy: Policy, device: torch.device) -> None:
        """Fill ``rollout`` with ``unroll`` steps played by ``policy`` from where the previous rollout stopped."""
        if rollout.task != self.task or rollout.game != self.game:
            self._start_task(rollout)
        observations, actions, rewards, dones = [], [], [], []
        for _ in range(self.unroll):
            current = torch.as_tensor(self._observations, device=device)
            action = policy(current)
            self._observations, reward, terminated, truncated, _ = self.envs.step(action.cpu().numpy())
            done = terminated | truncated
            self._returns += reward
            self._lengths += 1
            for index in np.flatnonzero(done):
                rollout.episode_returns.append(float(self._returns[index]))
                rollout.episode_lengths.append(int(self._lengths[index]))
            self._returns[done] = 0.0
            self._lengths[done] = 0
            observations.append(current)
            actions.append(action)
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
            dones.append(torch.as_tensor(done))
        self._env_steps += self.unroll * self.num_envs
        rollout.observations = torch.stack(observations)
        rollout.actions = torch.stack(actions).to(device)
        rollout.rewards = torch.stack(rewards).to(device)
        rollout.dones = torch.stack(dones).to(device)
        rollout.next_observations = torch.as_tensor(self._observations, device=device)
        rollout.env_steps = self._env_steps

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
        self.envs, self.game, self.task = None, None, None

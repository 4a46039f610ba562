"""``AtariDataModule``: a stream of Atari games, ``inner_steps`` optimizer steps each, as rollouts.

Task ``t`` of the stream is a game of the meta-training pool (each pass over the pool is a seeded permutation, as
for image tasks); under DDP its :class:`~lightning_meta.data.schedule.TaskSchedule` says
which task each process plays. Each batch is an empty :class:`~lightning_meta.families.rollouts.Rollout` that the
module fills with its current policy (see :mod:`lightning_meta.families.rollouts`).

Examples:
    >>> data = AtariDataModule(AtariGames(train=["Pong", "Freeway"]), inner_steps=3, num_envs=2)
    >>> data.setup("fit")
    >>> stream = iter(data.train_dataloader())
    >>> [(r.task, r.game) for r in (next(stream) for _ in range(7))]
    [(0, 'Pong'), (0, 'Pong'), (0, 'Pong'), (1, 'Freeway'), (1, 'Freeway'), (1, 'Freeway'), (2, 'Freeway')]
    >>> data.teardown("fit")
"""

from __future__ import annotations

from collections.abc import Iterator

from lightning_meta.data.datamodule import StreamDataModule
from lightning_meta.data.stream import stream_task_index
from lightning_meta.families.atari import AtariGames
from lightning_meta.families.rollouts import Rollout, RolloutCollector
from lightning_meta.validation import Parallel


class RolloutStream:
    """The endless training stream of empty rollouts, starting at the batch the run has reached."""

    def __init__(self, datamodule: AtariDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[Rollout]:
        data = self.datamodule
        assert data.collector is not None, "call setup('fit') first"
        accumulation = data._accumulation()
        trainer = data.trainer
        batch = 0 if trainer is None else trainer.global_step * accumulation
        while True:
            task = data.schedule.task(batch // accumulation)
            game = data.game_of_task(task)
            yield Rollout(task, game, data.games.num_actions(game), source=data.collector)
            batch += 1


class AtariDataModule(StreamDataModule):
    """Streams the meta-training games of :class:`~lightning_meta.families.AtariGames` as rollouts, one game a task.

    Args:
        games: the task family (default: :class:`~lightning_meta.families.AtariGames`'s pool and held-out games).
        inner_steps, meta_batch_size, parallel, max_meta_steps: the task schedule
            (:class:`~lightning_meta.data.StreamDataModule`): optimizer steps (rollouts) per task, tasks per
            meta-step, how DDP processes share them, the meta-steps to run.
        num_envs: copies of the game played in parallel per process.
        unroll: steps per rollout (the n of the n-step returns).
        asynchronous: one process per game copy (gymnasium ``AsyncVectorEnv``) instead of all in the trainer's.
        repeat_action_probability: ALE sticky actions (v5's default 0.25).
        max_episode_steps: truncate episodes after this many agent steps (``None``: the ALE's 108000 frames).
        seed: seed of the game order and of the environments (each DDP process plays its own seeds).
    """

    def __init__(
        self,
        games: AtariGames | None = None,
        inner_steps: int = 1000,
        meta_batch_size: int | None = None,
        parallel: Parallel | None = None,
        max_meta_steps: int | None = None,
        num_envs: int = 16,
        unroll: int = 5,
        asynchronous: bool = False,
        repeat_action_probability: float = 0.25,
        max_episode_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(inner_steps, meta_batch_size, parallel=parallel, max_meta_steps=max_meta_steps)
        self.games = games if games is not None else AtariGames()
        self.seed = seed
        # the settings of every collector this data module makes (a collector makes no environment until it plays)
        self.settings = RolloutCollector(
            self.games, num_envs, unroll, asynchronous, repeat_action_probability, max_episode_steps, seed
        )
        self.collector: RolloutCollector | None = None

    def make_collector(self, seed: int) -> RolloutCollector:
        """A collector with this data module's settings (evaluation callbacks make their own)."""
        return self.settings.fresh(seed)

    def game_of_task(self, task: int) -> str:
        """The meta-training game at a position of the task stream."""
        pool = self.games.games("train")
        return pool[stream_task_index(task, len(pool), self.seed)]

    def setup(self, stage: str) -> None:
        if self.collector is None:
            _, rank = self._processes()
            self.collector = self.make_collector(seed=self.seed + 1_000_003 * rank)

    def train_dataloader(self) -> RolloutStream:
        self.setup("fit")
        self._start_stream()
        return RolloutStream(self)

    def teardown(self, stage: str) -> None:
        if self.collector is not None:
            self.collector.close()
            self.collector = None

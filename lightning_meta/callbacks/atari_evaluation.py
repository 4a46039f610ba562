"""``AtariEvaluation``: learning curves on held-out Atari games from the meta-learned encoder vs a random one.

When fit ends, for each held-out game of the :class:`~lightning_meta.families.AtariDataModule` and each seed, a copy of
the module trains for ``env_steps`` agent steps twice: from theta_0 (the meta-learned encoder, read from the
Trainer's :class:`~lightning_meta.callbacks.MetaInit`, else the module's weights) and from a random encoder drawn
with the seed; the heads are fresh in both. The same seed plays the same environments and samples the same way in
both. Each run's curve is the mean raw return of its last ``window`` finished episodes at ``points`` evenly spaced
step counts, human-normalised: ``(return - random) / (human - random)``, with the random-policy and human scores of
DQN Zoo's ``atari_data.py`` (Atari-57, 30 no-op starts; Breakout: 1.7 and 30.5, SpaceInvaders: 148.0 and 1668.7).
The figure (one panel per game, mean and one standard deviation over seeds) goes to ``plot_path`` and to every
logger that takes images; final normalised returns and curve AUCs are logged as metrics, the curves saved as JSON.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import AtariEvaluation, Leap
    >>> callbacks = [Leap(p=2, include="encoder"), AtariEvaluation(env_steps=10_000, seeds=[0, 1, 2])]
    >>> trainer = L.Trainer(callbacks=callbacks, max_steps=1000, logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.callbacks.progress import held_out_progress
from lightning_meta.families.atari_data import AtariDataModule
from lightning_meta.families.rollouts import Rollout
from lightning_meta.metrics import curve_auc
from lightning_meta.plotting import log_image, plot_return_curves
from lightning_meta.trainer.held_out import HeldOutTraining
from lightning_meta.utils import run_dir
from lightning_meta.validation import check_range

# (random policy, human) scores of DQN Zoo's atari_data.py (30 no-op starts); pass `scores=` for other games
HUMAN_SCORES = {"Breakout": (1.7, 30.5), "SpaceInvaders": (148.0, 1668.7)}


def evaluation_task(seed: int) -> int:
    """The stream position a held-out run of ``seed`` plays as: negative, never a meta-training task, so the heads
    start fresh, and drawn anew for every seed."""
    return -1 - seed


def running_returns(episodes: list[tuple[int, float]], grid: Tensor, window: int) -> Tensor:
    """At each step count of ``grid``: the mean return of the last ``window`` episodes that ended by then (NaN
    before the first). ``episodes`` are ``(step count at the end, return)`` in the order they ended."""
    values = []
    for step in grid.tolist():
        ended = [value for at, value in episodes if at <= step][-window:]
        values.append(sum(ended) / len(ended) if ended else math.nan)
    return torch.tensor(values, dtype=torch.float64)


def updates_per_run(data: AtariDataModule, env_steps: int) -> int:
    """Updates (rollouts of ``unroll`` steps of ``num_envs`` games) that make ``env_steps`` agent steps, rounded up."""
    return -(-env_steps // (data.settings.unroll * data.settings.num_envs))


def train_on_game(
    pl_module: L.LightningModule,
    state: dict[str, Tensor],
    data: AtariDataModule,
    game: str,
    env_steps: int,
    seed: int,
    device: torch.device | None = None,
    progress: Callable[[], None] | None = None,
) -> list[tuple[int, float]]:
    """Train a copy of ``pl_module`` from ``state`` on ``game`` for ``env_steps`` agent steps (on ``device``, default
    the module's; ``progress`` is called after every update); return its episodes as ``(step count at the end of the
    rollout, raw return)``. The module and the global RNG are left untouched."""
    collector = data.make_collector(seed)
    episodes: list[tuple[int, float]] = []
    updates = updates_per_run(data, env_steps)
    try:
        with HeldOutTraining(pl_module, device or pl_module.device, progress) as run:
            run.start(state, seed)
            for update in range(updates):
                rollout = Rollout(evaluation_task(seed), game, data.games.num_actions(game), source=collector)
                run.model.on_train_batch_start(rollout, update)  # plays the rollout with the current policy
                run.step(rollout, update)
                episodes += [(rollout.env_steps, value) for value in rollout.episode_returns]
    finally:
        collector.close()
    return episodes


def random_state(pl_module: L.LightningModule, seed: int) -> dict[str, Tensor]:
    """The module's ``state_dict`` with every layer re-initialised (``reset_parameters``) from ``seed``."""
    model = copy.deepcopy(pl_module)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for layer in model.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
    return model.state_dict()


class AtariEvaluation(L.Callback):
    """Held-out Atari learning curves, meta-learned encoder vs random encoder, over seeds (see the module docstring).

    Args:
        env_steps: agent steps (of 4 frames) each run trains on a held-out game.
        seeds: one run per seed, per game and per encoder.
        points: step counts at which the curves are read.
        window: episodes averaged into each point of a curve.
        normalization: ``"human"`` (random 0, human 1) or ``"raw"`` (game score).
        scores: ``{game: (random score, human score)}`` for games missing from :data:`HUMAN_SCORES`.
        plot_path: where to write the PNG (default: ``atari_evaluation.png`` in the run's versioned folder,
            :func:`~lightning_meta.utils.run_dir`; the curves go beside it as JSON).
    """

    def __init__(
        self,
        env_steps: int = 100_000,
        seeds: list[int] | None = None,
        points: int = 20,
        window: int = 10,
        normalization: Literal["human", "raw"] = "human",
        scores: dict[str, tuple[float, float]] | None = None,
        plot_path: str | None = None,
    ) -> None:
        if normalization not in ("human", "raw"):
            raise ValueError(f"normalization must be 'human' or 'raw', got {normalization!r}")
        check_range("AtariEvaluation", 1, env_steps=env_steps, points=points, window=window)
        self.env_steps = env_steps
        self.seeds = list(seeds if seeds is not None else [0, 1, 2])
        self.points = points
        self.window = window
        self.normalization = normalization
        self.scores = {**HUMAN_SCORES, **(scores or {})}
        self.plot_path = plot_path
        self.curves: dict[str, dict[str, Tensor]] = {}  # {game: {encoder: normalised returns [seeds, points]}}
        self.figure: Path | None = None  # the PNG, once written
        self.steps = torch.linspace(env_steps / points, env_steps, points)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = getattr(trainer, "datamodule", None)
        if not isinstance(data, AtariDataModule):
            raise MisconfigurationException(
                "AtariEvaluation plays the held-out games of an AtariDataModule (datamodule=...)"
            )
        games = data.games.games("test")
        if not games:
            raise MisconfigurationException("AtariEvaluation: the AtariGames family has no held-out ('test') games")
        missing = [game for game in games if game not in self.scores]
        if self.normalization == "human" and missing:
            raise MisconfigurationException(
                f"AtariEvaluation(normalization='human') has no random and human scores for {missing}: pass "
                "scores={game: (random, human)} or normalization='raw'"
            )

    def normalise(self, game: str, returns: Tensor) -> Tensor:
        if self.normalization == "raw":
            return returns
        random, human = self.scores[game]
        return (returns - random) / (human - random)

    def held_out_steps_left(self, trainer: L.Trainer) -> int:
        """The updates the evaluation at the end of fit will take on this process (all on process 0;
        :class:`~lightning_meta.protocols.PlansHeldOutSteps`, for the progress bar's ETA)."""
        data = getattr(trainer, "datamodule", None)
        if self.curves or not trainer.is_global_zero or not isinstance(data, AtariDataModule):
            return 0
        return len(data.games.games("test")) * 2 * len(self.seeds) * updates_per_run(data, self.env_steps)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._plot_path(trainer)  # on every process: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:  # the other processes wait at the barrier
            self.evaluate(trainer, pl_module, path)
        trainer.strategy.barrier("atari_evaluation")

    def _plot_path(self, trainer: L.Trainer) -> Path:
        return Path(self.plot_path or run_dir(trainer) / "atari_evaluation.png")

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """Learn every held-out game from the meta-learned and from random encoders, for every seed; plot the curves
        to ``path`` (default ``plot_path`` or the log folder) and log them."""
        data = getattr(trainer, "datamodule", None)
        assert isinstance(data, AtariDataModule)
        meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
        learned = meta.init_state_dict(pl_module) if meta is not None else pl_module.state_dict()
        label = "meta-learned encoder" if meta is not None else "trained encoder"
        games = data.games.games("test")
        sizes = f"{len(games)} games x {len(self.seeds)} seeds x 2 encoders, {self.env_steps} steps each"
        title = f"Held-out games ({sizes})"
        total = len(games) * 2 * len(self.seeds) * updates_per_run(data, self.env_steps)  # as held_out_steps_left
        device = trainer.strategy.root_device  # Lightning moved the module to the CPU before on_fit_end
        with held_out_progress(trainer, title, total) as advance:
            for game in games:
                runs: dict[str, list[Tensor]] = {label: [], "random encoder": []}
                for seed in self.seeds:
                    for name, state in ((label, learned), ("random encoder", random_state(pl_module, seed))):
                        episodes = train_on_game(pl_module, state, data, game, self.env_steps, seed, device, advance)
                        runs[name].append(self.normalise(game, running_returns(episodes, self.steps, self.window)))
                self.curves[game] = {name: torch.stack(curves) for name, curves in runs.items()}
        self._log(trainer, path or self._plot_path(trainer))
        return self.curves

    def results(self) -> list[dict[str, str | int | float]]:
        """One row per held-out game and encoder, for the run's summary: the final return and the AUC of the mean
        curve over seeds (NaN where no episode ended)."""
        rows: list[dict[str, str | int | float]] = []
        for game, runs in self.curves.items():
            for name, returns in runs.items():
                mean = returns.nanmean(0)
                ended = mean[~mean.isnan()]
                auc = float(curve_auc(ended)) if len(ended) else math.nan
                row: dict[str, str | int | float] = {"game": game, "encoder": name, "seeds": returns.shape[0]}
                rows.append({**row, "final_return": float(mean[-1]), "return_auc": auc})
        return rows

    def _log(self, trainer: L.Trainer, path: Path) -> None:
        metrics = {
            f"atari_eval/{row['game']}/{str(row['encoder']).replace(' ', '_')}/{key}": float(row[key])
            for row in self.results()
            for key in ("final_return", "return_auc")
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        ylabel = "human-normalised return" if self.normalization == "human" else "return (game score)"
        self.figure = plot_return_curves(self.curves, self.steps, path, ylabel)
        log_image(trainer.loggers, "atari_eval/learning_curves", path, trainer.global_step)
        curves = {game: {label: r.tolist() for label, r in runs.items()} for game, runs in self.curves.items()}
        table = {
            "env_steps": self.steps.tolist(),
            "normalization": self.normalization,
            "metrics": metrics,
            "curves": curves,
        }
        path.with_suffix(".json").write_text(json.dumps(table, indent=1))
        rank_zero_info(f"AtariEvaluation: learning curves written to {path} (curves: {path.with_suffix('.json')})")

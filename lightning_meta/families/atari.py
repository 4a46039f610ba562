"""Atari games as tasks: the games of the Arcade Learning Environment (ale-py) behind gymnasium, preprocessed as in
Mnih et al. (grey 84x84 frames, 4 stacked, each action repeated for 4 frames, up to 30 no-ops at reset).

Needs the optional dependencies (``pip install -e ".[atari]"`` in the clone: gymnasium, ale-py, which ships the ROMs,
and OpenCV for the resizing); ``lightning_meta`` itself imports without them. Games use the minimal action set
(``full_action_space=False``, gymnasium's default for ``ALE/<Game>-v5``), so action spaces differ between games.

Examples:
    >>> games = AtariGames(train=["Pong", "Freeway"], test=["Breakout"])
    >>> games.games("test"), games.num_actions("Breakout")
    (['Breakout'], 4)
    >>> envs = make_vector_env("Breakout", num_envs=2)
    >>> observations, _ = envs.reset(seed=0)
    >>> observations.shape, observations.dtype
    ((2, 4, 84, 84), dtype('uint8'))
    >>> envs.close()
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from types import ModuleType
from typing import Any, Literal

INSTALL = 'pip install -e ".[atari]"'  # from the clone: the package is not on an index

# The Atari-57 games of the ALE benchmark with a minimal action set of at most 10 actions, less the held-out ones.
META_TRAINING_GAMES = (
    "Amidar", "Assault", "Asterix", "Atlantis", "BeamRider", "Bowling", "CrazyClimber", "DemonAttack", "Enduro",
    "Freeway", "Gopher", "MsPacman", "NameThisGame", "Phoenix", "Pong", "Qbert", "Skiing", "TimePilot", "Tutankham",
    "UpNDown", "VideoPinball", "WizardOfWor",
)  # fmt: skip
HELD_OUT_GAMES = ("Breakout", "SpaceInvaders")


def require_atari() -> ModuleType:
    """``gymnasium`` with the ALE environments registered, or an ImportError that says what to install."""
    try:
        gym = importlib.import_module("gymnasium")
        ale_py = importlib.import_module("ale_py")
        importlib.import_module("cv2")  # gymnasium's AtariPreprocessing resizes frames with OpenCV
    except ImportError as error:
        raise ImportError(
            f"The Atari recipe needs gymnasium, ale-py and OpenCV ({error.name or error} is missing): run `{INSTALL}`."
        ) from error
    gym.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)  # no banner (version, "Powered by Stella") per game
    return gym


def env_id(game: str) -> str:
    """``"ALE/<game>-v5"`` for a game whose ROM is there; a clear error for an unknown game or a missing ROM."""
    gym = require_atari()
    name = f"ALE/{game}-v5"
    if name not in gym.registry:
        known = sorted(key[4:-3] for key in gym.registry if key.startswith("ALE/") and key.endswith("-v5"))
        close = difflib.get_close_matches(game, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known games: {', '.join(known)}"
        raise ValueError(f"unknown Atari game {game!r} (no gymnasium id {name!r}): {hint}")
    check_rom(game, gym.registry[name].kwargs["game"])
    return name


def check_rom(game: str, rom: str) -> None:
    """Raise a clear error when ale-py finds no ROM for ``game`` (whose ROM file is ``<rom>.bin``)."""
    roms = importlib.import_module("ale_py.roms")
    try:
        path = roms.get_rom_path(rom)
    except OSError as error:  # no such file, no such folder, or a ROM with the wrong checksum
        path, reason = None, str(error)
    else:
        reason = "ale-py does not support it"
    if path is None:
        raise FileNotFoundError(
            f"no ROM for Atari game {game!r} ({rom}.bin): {reason}. ale-py >= 0.9 ships the ROMs: reinstall it "
            f"(`{INSTALL}`), or point ALE_ROMS_DIR at a folder that holds {rom}.bin."
        )


@cache
def _num_actions(game: str) -> int:
    gym = require_atari()
    env = gym.make(env_id(game))
    try:
        return int(env.action_space.n)
    finally:
        env.close()


def make_env(game: str, repeat_action_probability: float = 0.25, max_episode_steps: int | None = None) -> Any:
    """One preprocessed game: observations ``uint8 [4, 84, 84]``, raw (unclipped) rewards, full games (no
    end-of-life episodes). ``max_episode_steps`` (in agent steps of 4 frames) truncates long episodes."""
    gym = require_atari()
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    frames = None if max_episode_steps is None else 4 * max_episode_steps
    env = gym.make(
        env_id(game), frameskip=1, repeat_action_probability=repeat_action_probability, max_episode_steps=frames
    )
    env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    return FrameStackObservation(env, stack_size=4)


def make_vector_env(
    game: str,
    num_envs: int,
    asynchronous: bool = False,
    repeat_action_probability: float = 0.25,
    max_episode_steps: int | None = None,
) -> Any:
    """``num_envs`` copies of a game as a gymnasium vector env that resets a finished episode in the same step (the
    observation after the last step of an episode is the first of the next; ``terminated | truncated`` marks it).

    ``asynchronous`` runs each copy in its own process (``AsyncVectorEnv``); on a few CPU cores the synchronous
    one is usually faster.
    """
    gym = require_atari()
    env_id(game)  # fail here, not in a subprocess

    def make() -> Any:
        return make_env(game, repeat_action_probability, max_episode_steps)

    vector = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return vector([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class AtariGames:
    """The Atari task family: each game is a task. Meta-training draws from ``train``; ``test`` is held out.

    The default pool is the 22 Atari-57 games with at most 10 actions other than the held-out Breakout and
    SpaceInvaders. Unlike the image :class:`~lightning_meta.data.TaskFamily`, a task here is an environment, not a
    dataset: :meth:`games` names them and :func:`make_vector_env` builds them.

    Args:
        train: meta-training games (``ALE/<Game>-v5`` names without prefix and version).
        test: held-out games, disjoint from ``train``.
        max_actions: games with a larger minimal action set are refused (the paper's pool has at most 10).
    """

    def __init__(self, train: list[str] | None = None, test: list[str] | None = None, max_actions: int = 10) -> None:
        self.train = list(META_TRAINING_GAMES if train is None else train)
        self.test = list(HELD_OUT_GAMES if test is None else test)
        self.max_actions = max_actions
        if not self.train:
            raise ValueError("AtariGames needs at least one meta-training game")
        both = sorted(set(self.train) & set(self.test))
        if both:
            raise ValueError(
                f"AtariGames: {both} are both meta-training and held-out games; held-out games must be new"
            )

    def games(self, split: Literal["train", "test"]) -> list[str]:
        """The games of a split, in a fixed order."""
        if split not in ("train", "test"):
            raise ValueError(f"AtariGames has the splits 'train' and 'test', got {split!r}")
        return self.train if split == "train" else self.test

    def num_actions(self, game: str) -> int:
        """The size of the game's minimal action set (checked against ``max_actions``)."""
        actions = _num_actions(game)
        if actions > self.max_actions:
            raise ValueError(
                f"{game} has {actions} actions, more than AtariGames(max_actions={self.max_actions}) allows: drop it "
                "from the pool or raise max_actions (and the model's max_actions)"
            )
        return actions

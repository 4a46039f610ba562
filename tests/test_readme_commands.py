"""The commands of the README's and the docs' ``bash`` blocks work as written, from the clone with the venv active
(which README.md, docs/index.md and notebooks/README.md say once): each runs in a subprocess, from a folder laid
out like the clone, at a tiny size (only sizes are added to its command line, and a logging interval no longer than
the tiny epochs), prints no warning and ends with the results summary. The commands that cannot run here say why in
``NOT_RUN``; a command that matches no rule fails the first test. ``lightning-meta --help`` names every recipe, and
``--verbose`` brings back what quiet runs hide.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

LOGGING = "--trainer.log_every_n_steps=1"  # tiny epochs are shorter than the recipes' logging intervals
OMNIGLOT = ["--data.inner_steps=2", "--data.meta_batch_size=2", "--data.max_meta_steps=2", "--model.init_args.channels=8"]
ATARI = [
    "--data.init_args.max_meta_steps=1", "--data.init_args.inner_steps=2", "--data.init_args.meta_batch_size=2",
    "--data.init_args.num_envs=2",
    "--data.init_args.max_episode_steps=10", "--trainer.callbacks.init_args.env_steps=40",
    "--trainer.callbacks.init_args.seeds=[0]", "--trainer.callbacks.init_args.points=2",
]  # fmt: skip
LANGUAGE_MODEL = [
    "--model.hidden_size=8", "--model.pretrain_batches=1", "--model.sgd_lrs=[0.1, 1.0]", "--data.segment=8",
    "--data.inner_steps=4", "--data.meta_batch_size=1", "--data.eval_bytes=48", "--trainer.max_steps=4",
]  # fmt: skip

VISION = [*OMNIGLOT, "--model.init_args.cosine_steps=2"]

RUN: dict[str, list[str]] = {  # a documented command (regular expression) -> what makes it tiny
    r"lightning-meta fit --config recipes/omniglot/leap\.yaml --config recipes/omniglot/quick\.yaml": [
        *OMNIGLOT, LOGGING,
    ],
    r"lightning-meta fit --config recipes/omniglot/leap\.yaml": [*OMNIGLOT, LOGGING],
    r"lightning-meta fit --config recipes/omniglot/reptile\.yaml --config recipes/omniglot/quick\.yaml": [
        *OMNIGLOT, LOGGING,
    ],
    r"lightning-meta fit --config recipes/omniglot/maml\.yaml --config recipes/omniglot/quick\.yaml": [
        "--model.init_args.inner_steps=2", *OMNIGLOT[1:], LOGGING,
    ],
    r"lightning-meta fit --config recipes/learned_optimizer/quadratics\.yaml": ["--trainer.max_steps=8"],
    r"python recipes/vision/sweep\.py --quick --out outputs/vision/quick": ["--", *VISION, LOGGING],
    r"lightning-meta fit --config recipes/vision/leap\.yaml": [*VISION, LOGGING],
    r"lightning-meta fit --config recipes/vision/leap\.yaml --config recipes/vision/quick\.yaml": [*VISION, LOGGING],
    r"lightning-meta fit --config recipes/atari/quick\.yaml": [*ATARI, LOGGING],
    r"lightning-meta fit --config recipes/atari/leap\.yaml": [*ATARI, LOGGING],
    r"lightning-meta fit --config recipes/atari/leap\.yaml --trainer\.logger=WandbLogger": [*ATARI, LOGGING],
    r"lightning-meta fit --config recipes/dynamical_lm/quick\.yaml": [*LANGUAGE_MODEL, LOGGING],
    # the one override that is not a size: the test machine may have no GPU
    r"lightning-meta fit --config recipes/dynamical_lm/gpu\.yaml": [
        "--trainer.accelerator=cpu", *LANGUAGE_MODEL, LOGGING,
    ],
}  # fmt: skip
NOT_RUN: dict[str, str] = {
    r"python3 -m venv \.venv": "makes the environment these tests already run in",
    r"pip install": (
        "installs packages (minutes, gigabytes); the tests run in the checks' environment ([all]). The lean install "
        "of the main job was run by hand in a fresh venv, and the main job in it (README: its time and size)"
    ),
    r"ruff check|mypy|mkdocs build|pytest": "the checks, which .ci/run runs and of which this test is one",
    r"--trainer\.devices=8 --trainer\.strategy=ddp": "needs 8 GPUs (tests/test_ddp.py runs DDP on 2 CPU processes)",
    r"^srun ": "needs a SLURM cluster",
    r"^torchrun ": "needs several machines",
    r"--data\.family=omniglot|recipes/vision/torchvision\.yaml": (
        "downloads the real data sets (tests/test_omniglot.py and tests/test_vision_family.py read files written in "
        "their formats)"
    ),
    r"--data\.family\.root=DIR": "DIR is your folder (tests/test_dynamical_lm.py reads generated WikiText and .txt)",
    r"recipes/omniglot/sweep\.py|recipes/vision/sweep\.py .*--jobs|--report-only|sweep\.py --out": (
        "sweeps of 27 to 210 cells, or their report of a finished sweep's CSV: tests/test_sweep_and_wandb.py runs "
        "both scripts with fewer cells at a tiny size (with --quick, in worker processes, killed and resumed); the "
        "README's vision sweep runs here whole at a tiny size"
    ),
    r"recipes/omniglot/(scaling|path_parts|scaling_costs)\.py": (
        "the scaling axes (hours of CPU), or their reports of a finished axis's CSV and checkpoints: "
        "tests/test_scaling.py runs the meta-steps axis at a tiny size, its report, path_parts.py and scaling_costs.py"
    ),
    r"^jupyter lab": "starts a notebook server (tests/test_notebooks.py runs every notebook in a kernel)",
    r"nbclient": "runs a notebook at its default size, minutes (tests/test_notebooks.py runs each at a tiny size)",
}
ACTIVATE = "source .venv/bin/activate"
"""The line the README, the docs' home page and the notebooks' README say once; every command after it uses it."""
PAGES = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WARNING = re.compile(r"\.py:\d+: |Warning|warning|💡")
"""What a warning looks like in the output: Lightning's ``path.py:line: message`` format, Python's categories, tips."""


def documented_commands() -> list[str]:
    """Every command of the pages' ``bash`` blocks, once: one per line (``\\`` continues a line), ``&&`` chains split,
    comments, a leading ``time`` and the venv's ``.venv/bin/`` dropped."""
    commands: list[str] = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^time ", "", line.split(" # ")[0].strip())
                if line and not line.startswith("#"):
                    commands += [" ".join(part.replace(".venv/bin/", "").split()) for part in line.split("&&")]
    return list(dict.fromkeys(commands))  # in the venv, .venv/bin/lightning-meta is lightning-meta


def rule(command: str) -> list[str] | str | None:
    """The tiny arguments of a command that runs here, the reason why it does not, or ``None``."""
    command = command.replace(".venv/bin/", "")
    if (match := re.fullmatch(r"((?:\w+=\S+ )*)(.*)", command)) is not None:
        command = match.group(2)  # environment assignments (OMP_NUM_THREADS=1) are not the command
    for pattern, tiny in RUN.items():
        if re.fullmatch(pattern, command):
            return tiny
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def run(command: str, extra: list[str], folder: Path, glyph_root: str) -> subprocess.CompletedProcess:
    """``command`` + ``extra`` in ``folder``, which links to the clone's ``recipes/``; this checkout's code."""
    (folder / "recipes").symlink_to(ROOT / "recipes")
    words = shlex.split(command.replace(".venv/bin/", ""))
    program = [sys.executable, "-m", "lightning_meta.cli"] if words[0] == "lightning-meta" else [sys.executable]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "LIGHTNING_META_CACHE": glyph_root}
    return subprocess.run(
        [*program, *words[1:], *extra], cwd=folder, env=environment, capture_output=True, text=True, timeout=600
    )


def test_every_documented_command_runs_here_or_says_why_not():
    commands = documented_commands()
    assert len(commands) >= 30, commands
    unknown = [command for command in commands if rule(command) is None]
    assert not unknown, f"commands without a rule in tests/test_readme_commands.py: {unknown}"
    ran = {pattern for pattern in RUN if any(rule(c) is RUN[pattern] for c in commands)}
    assert ran == set(RUN), f"rules for commands the pages no longer have: {set(RUN) - ran}"


def test_the_venv_is_said_once_before_the_commands_that_need_it():
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "notebooks" / "README.md"):
        text = page.read_text()
        assert ACTIVATE in text, f"{page.name} does not say how to activate the venv"
        bare = re.search(r"```bash\n(?:[^`]*\n)?(lightning-meta|python|pip|jupyter) ", text)
        assert bare is None or text.index(ACTIVATE) < bare.start(), f"{page.name} uses the venv before saying so"


@pytest.mark.parametrize("command", [c for c in documented_commands() if isinstance(rule(c), list)])
def test_the_documented_command_runs_quietly_and_ends_with_a_summary(command, tmp_path, glyph_root):
    tiny = rule(command)
    assert isinstance(tiny, list)
    result = run(command, tiny, tmp_path, glyph_root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert not [line for line in output.splitlines() if WARNING.search(line)], output[-4000:]
    summaries = list((tmp_path / "outputs").rglob("summary.csv"))
    assert summaries and "Results (" in result.stderr, output[-4000:]
    for summary in summaries:  # next to the run's metrics
        assert (summary.parent / "metrics.csv").exists() or (summary.parent / "config.yaml").exists()
    named = [p.name for p in (tmp_path / "outputs").rglob("*.ckpt") if p.name not in ("last.ckpt", "final.ckpt")]
    assert all(name.startswith(("meta-step=", "step=")) for name in named), named  # meta-steps, or steps, never epochs


def test_help_names_every_recipe_with_its_command_and_says_nothing_of_wandb():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_meta.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0
    configs = re.findall(r"--config (recipes/\S+\.yaml)", result.stdout)
    assert all((ROOT / config).exists() for config in configs)
    methods = {path.parent.name for path in (ROOT / "recipes").glob("*/*.yaml")}
    assert {Path(config).parent.name for config in configs} == methods  # every recipe folder has its command
    assert "lightning-meta fit --help" in result.stdout and "--verbose" in result.stdout
    assert "W&B" not in result.stdout + result.stderr


def test_verbose_lets_lightnings_tips_through(tmp_path, glyph_root):
    command = "lightning-meta fit --config recipes/learned_optimizer/quadratics.yaml"
    result = run(command, ["--trainer.max_steps=1", "--verbose"], tmp_path, glyph_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "💡 Tip" in result.stderr


def test_every_config_and_script_the_readme_and_docs_name_exists():
    pages = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *(ROOT / "docs").glob("*.md")]
    command = re.compile(r"(?:--config|python3?) ([\w./-]+\.(?:yaml|py))")
    named = {path for page in pages for path in command.findall(page.read_text())}
    assert len(named) >= 15
    assert not [path for path in named if not (ROOT / path).exists()]

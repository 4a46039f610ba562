"""Test-wide settings: offline W&B, no stray logs (each test's files in its own ``tmp_path``, which pytest removes
when the test passes), the test helpers importable, and a check that the run leaves nothing in the temp folder:
the session's temporary files (``tempfile``'s, pytest's ``tmp_path`` and those of the processes the tests start,
through ``TMPDIR``) go to a folder of its own, and anything in it besides pytest's ``tmp_path`` folders when the
session ends fails the run, named."""

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One build of the embedded glyph alphabets for the whole session, outside the user's cache."""
    from lightning_meta.families import GlyphAlphabets

    root = str(tmp_path_factory.mktemp("glyphs"))
    GlyphAlphabets(root=root).prepare_data()
    return root


@pytest.fixture(autouse=True)
def trainer_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``make_trainer`` writes into the test's ``tmp_path``: nothing is left behind in /tmp."""
    import helpers

    monkeypatch.setattr(helpers, "TRAINER_ROOT", tmp_path)
    return tmp_path


SESSION_TEMP = "LIGHTNING_META_TEST_TEMP"
"""The environment variable naming the session's temp folder (set once, so that nested sessions share it)."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Send every temporary file of the session to a fresh folder of its own."""
    folder = tempfile.mkdtemp(prefix="lightning-meta-tests-")
    os.environ[SESSION_TEMP] = os.environ["TMPDIR"] = tempfile.tempdir = folder


NOT_OURS = re.compile(r"pytest-of-|torchinductor_|wandb-\d+-|tmp\w+wandb-(media|artifacts)$")
"""Entries of the temp folder the check leaves alone: pytest's ``tmp_path`` folders (kept for failed tests only),
torch's compile cache, which ``import lightning`` creates, empty, and every later run reuses, and W&B's folders of a
process (its service's, its media and artifact staging), which wandb removes when the process exits (checked: an
offline run leaves none after exit)."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when tests or doctests left files in the temp folder (:data:`NOT_OURS` excepted); then remove
    them, and the folder when the run passed."""
    folder = Path(os.environ[SESSION_TEMP])
    left = sorted(p.name for p in folder.iterdir() if not NOT_OURS.match(p.name))
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: the tests left {len(left)} entries in the temp folder: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for name in left:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if session.exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(folder, ignore_errors=True)

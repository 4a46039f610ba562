"""Test-wide settings: offline W&B, no stray logs (each test's files in its own ``tmp_path``, which pytest removes
when the test passes), the test helpers importable."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One build of the embedded glyph alphabets for the whole session, outside the user's cache."""
    from lightning_meta.tasks import GlyphAlphabets

    root = str(tmp_path_factory.mktemp("glyphs"))
    GlyphAlphabets(root=root).prepare_data()
    return root


@pytest.fixture(autouse=True)
def trainer_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``make_trainer`` writes into the test's ``tmp_path``: nothing is left behind in /tmp."""
    import helpers

    monkeypatch.setattr(helpers, "TRAINER_ROOT", tmp_path)
    return tmp_path

"""Test-wide settings: offline W&B, no stray logs, the test helpers importable."""

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

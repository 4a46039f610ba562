"""Every Python block of the README and of ``docs/`` runs as written, at a tiny size: the sizes of the run (inner
steps, meta-batch, tasks trained together, meta-steps, evaluation interval, channels, held-out steps) are
substituted by the rules of ``TINY``, and nothing else changes. A block that cannot run in one CPU process (several
processes under torchrun, GPUs) begins ``# Sketch:`` with why and the test that runs its code; it is listed as
skipped with that reason. Each block runs in this process from an empty
working folder, with the embedded glyph alphabets of the session. A block a rule does not reach runs at its own
size, so a page's new block must be small or get a rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

TINY: list[tuple[str, str]] = [  # (regular expression, replacement): sizes only
    (r"\binner_steps=\d+", "inner_steps=2"),
    (r"\bmeta_batch_size=\d+", "meta_batch_size=2"),
    (r"\btask_batch=\d+", "task_batch=2"),
    (r"\bmax_meta_steps=\d+", "max_meta_steps=2"),
    (r"\bevery_n_meta_steps=\d+", "every_n_meta_steps=2"),  # held-out evaluations of the start and the end
    (r"\bchannels=64\b", "channels=8"),
    (r"\bConvClassifier\(num_classes=20\)", "ConvClassifier(num_classes=20, channels=8)"),  # its default is 64
    (r"\bfor steps in \(10, 20, 100\)", "for steps in (1, 2)"),  # docs/omniglot.md: held-out steps per task
]


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def python_blocks() -> list[Block]:
    """Every fenced ``python`` block of the pages, with the line it starts on."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, re.S):
            line = text.count("\n", 0, match.start()) + 2
            found.append(Block(str(page.relative_to(ROOT)), line, match.group(1)))
    return found


def tiny(code: str) -> str:
    for pattern, replacement in TINY:
        code = re.sub(pattern, replacement, code)
    return code


def test_the_readme_and_the_docs_have_python_blocks_and_every_rule_reaches_one():
    blocks = python_blocks()
    assert len(blocks) >= 15, [str(b) for b in blocks]
    unused = [pattern for pattern, _ in TINY if not any(re.search(pattern, b.code) for b in blocks)]
    assert not unused, f"rules for sizes no block has any more: {unused}"


@pytest.mark.parametrize("block", python_blocks(), ids=str)
def test_the_block_runs_as_written_at_a_tiny_size(block, tmp_path, monkeypatch, glyph_root):
    first = block.code.splitlines()[0]
    if first.startswith("# Sketch:"):  # says why it cannot run in one CPU process, and which test runs its code
        assert "tests/test_" in first, f"{block}: a sketch names the test that runs its code"
        pytest.skip(first.removeprefix("# Sketch: "))
    monkeypatch.chdir(tmp_path)  # logs, checkpoints and files the block writes stay in the test's folder
    monkeypatch.setenv("LIGHTNING_META_CACHE", glyph_root)
    torch.manual_seed(0)
    exec(compile(tiny(block.code), str(block), "exec"), {"__name__": "__main__"})

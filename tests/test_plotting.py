"""The library draws its figures without pyplot, so it never changes the backend a user (or Jupyter) chose."""

from __future__ import annotations

import subprocess
import sys


def test_importing_and_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    script = f"""
import matplotlib
matplotlib.use("svg")
import torch
import lightning_meta, lightning_meta.callbacks.meta_evaluation
from pathlib import Path
from lightning_meta.plotting import plot_learning_curves
path = plot_learning_curves({{"init": (torch.rand(2, 5), torch.rand(2, 5))}}, Path({str(tmp_path)!r}) / "c.png", "t")
assert path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", "not a PNG"
print(matplotlib.get_backend())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "svg"

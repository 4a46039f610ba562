"""benchmarks/gpu_check.py, the GPU-sized protocol's one command, at a tiny size on the CPU: every part runs and
lands in the JSON and the markdown, so that it works the first time a GPU is available."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_at_a_tiny_size_on_the_cpu(tmp_path, glyph_root):
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--smoke", "--minutes",
               "8", "--out", str(tmp_path), "--glyph-root", glyph_root]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(
        ("glyphs", "throughput", "overhead", "leap", "reptile"), "ok")
    throughput = json.loads((tmp_path / "throughput.json").read_text())["result"]
    assert set(throughput) == {"8/1", "8/2"} and throughput["8/2"]["batched"]["task_steps_per_s"] > 0
    overhead = json.loads((tmp_path / "raw_overhead.json").read_text())["result"]
    assert overhead["raw"]["median_ratio"] == 1 and overhead["lightning+leap"]["median_ms"] > 0
    for name in ("leap", "reptile"):  # the smoke fit is 2 meta-steps of 2 tasks trained together
        part = parts[name]
        assert part["meta_steps"] == 2 and 0 < part["trained_seconds"] < part["seconds"]
        expected = 1000 / part["meta_steps_per_minute"]  # the script rounds to 0.1 minute
        assert part["minutes_for_authors_meta_steps"] == pytest.approx(expected, rel=1e-2, abs=0.05)
        assert set(part["held_out"]) == {"initial weights", "meta-step 2"}
        assert "--data.task_batch=2" in part["command"] and "--trainer.max_time=" in part["command"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown == report["markdown"] + "\n"
    assert "| leap | ok | 2 |" in markdown and "| reptile | ok | 2 |" in markdown and "| lightning+leap |" in markdown

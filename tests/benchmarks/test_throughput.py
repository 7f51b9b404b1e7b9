"""benchmarks/throughput.py run tiny: the shape of what it reports, not its speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "throughput.py"


def test_throughput_smoke_reports_every_concurrency_against_one_at_a_time(
    tmp_path: Path,
) -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert json.loads(completed.stdout) == report
    assert report["model"]["preset"] == "tiny-random" and report["greedy"] is True
    assert report["peak_rss_mib"] > 0
    results = report["results"]
    assert [r["concurrency"] for r in results] == [1, 2, 4, 8]
    for result in results:
        assert result["answers"] == report["requests"] == 8
        assert 0 < result["new_tokens"] <= 8 * report["max_new_tokens"]
        assert result["answers_per_s"] == pytest.approx(8 / result["seconds"], rel=0.05)
        assert result["tokens_per_s_vs_one_at_a_time"] > 0
    assert results[0]["answers_per_s_vs_one_at_a_time"] == 1.0
    # Greedy decoding answers the same requests alike whatever their batch-mates.
    assert len({r["new_tokens"] for r in results}) == 1


def test_throughput_scaled_model_is_bigger_than_the_tiny_one() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.throughput import SCALED
    from skingpt.model.presets import TINY_RANDOM

    for key in ("hidden_size", "intermediate_size", "num_hidden_layers"):
        assert SCALED.text[key] > TINY_RANDOM.text[key]
    assert SCALED.text["hidden_size"] >= 100

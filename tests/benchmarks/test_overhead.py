"""benchmarks/overhead.py and memory.py run tiny against real processes: what they report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, redis_url: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SKINGPT_TEST_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report: dict[str, Any] = json.loads(completed.stdout)
    return report


def _summary_is_ordered(summary: dict[str, float], count: int) -> None:
    assert summary["count"] == count
    assert 0 < summary["min_ms"] <= summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"]


def test_overhead_smoke_times_jobs_beside_a_bare_celery_round_trip(
    redis_url: str, tmp_path: Path
) -> None:
    report = _run("overhead.py", tmp_path, redis_url)
    assert json.loads((tmp_path / "overhead.json").read_text()) == report
    _summary_is_ordered(report["bare_celery"]["round_trip"], 5)
    pipeline = report["pipeline"]
    for kind, count in (("follow_up_jobs", 3), ("photo_analysis_jobs", 1)):
        jobs = pipeline[kind]
        for part in ("queued_to_reply_recorded", "queued_to_outbox", "outbox_to_reply_recorded"):
            _summary_is_ordered(jobs[part], count)
        # A reply goes out only after its answer reached the outbox.
        whole = jobs["queued_to_reply_recorded"]
        assert whole["min_ms"] >= jobs["queued_to_outbox"]["min_ms"]
        assert whole["max_ms"] >= jobs["outbox_to_reply_recorded"]["max_ms"]
    startup = pipeline["startup"]
    assert startup["worker_start_to_first_reply_s"] >= startup["first_job_queued_to_reply_s"] > 0
    assert pipeline["worker_peak_rss_mib"]["main.child0"] > pipeline["worker_peak_rss_mib"]["main"]
    assert report["follow_up_p50_vs_celery_p50"] > 0


def test_memory_smoke_reads_the_worker_processes_peak(redis_url: str, tmp_path: Path) -> None:
    report = _run("memory.py", tmp_path, redis_url)
    (worker,) = report["workers"]
    assert worker["model"] == "tiny-random"
    assert worker["worker_start_to_first_reply_s"] > 0
    # The pool child holds torch and the model; the main process only Celery.
    assert worker["peak_rss_mib"]["main.child0"] > worker["peak_rss_mib"]["main"] > 10

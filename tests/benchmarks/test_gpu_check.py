"""benchmarks/gpu_check.py without a GPU: the CPU smoke run, the no-CUDA skip, and its parts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from skingpt.model.modeling import SkinGPT, parameter_counts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
STAGES = ["environment", "bf16", "bandwidth", "bf16_batch32", "nf4"]
# What the serving side imports; the check must run on a GPU machine that has none of them.
SERVICE_PACKAGES = {"celery", "kombu", "redis", "telegram", "bot", "worker"}


def _run(
    out: Path, *args: str, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_flags, str(SCRIPT), "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        # One thread keeps the run quick on small machines; no GPU is visible even where one is.
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )


def _imported_packages(importtime_log: str) -> set[str]:
    """Top-level package names in ``python -X importtime`` output ("import time: a | b | name")."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.fixture(scope="module")
def smoke(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """One ``--smoke`` run shared by the tests below, and the JSON file it wrote."""
    out = tmp_path_factory.mktemp("gpu_check_smoke")
    completed = _run(out, "--smoke")
    assert completed.returncode == 0, completed.stderr
    return completed, json.loads((out / "gpu_check.json").read_text())


def test_gpu_check_smoke_prints_the_json_it_wrote(smoke: tuple[Any, Any]) -> None:
    completed, report = smoke
    assert json.loads(completed.stdout) == report
    assert report["mode"] == "smoke" and report["finished"] is True
    assert list(report["stages"]) == STAGES
    assert not any("error" in stage for stage in report["stages"].values())


def test_gpu_check_smoke_builds_the_tiny_model(
    smoke: tuple[Any, Any], tiny_model: SkinGPT
) -> None:
    bf16 = smoke[1]["stages"]["bf16"]
    assert bf16["parameter_counts"] == parameter_counts(tiny_model.model)
    assert bf16["parameters_total"] == sum(parameter_counts(tiny_model.model).values())
    assert bf16["build_s"] > 0 and bf16["weights_bytes"] > 0
    assert bf16["finite_outputs"] == {"image_embeds": True, "logits": True}
    for batch in ("batch_1", "batch_8"):
        timing = bf16["image_path"][batch]
        assert timing["vision_encoder_ms"] > 0 and timing["image_to_embeddings_ms"] > 0


def test_gpu_check_smoke_times_generation(smoke: tuple[Any, Any]) -> None:
    stages = smoke[1]["stages"]
    runs = [*stages["bf16"]["generation"].values(), stages["bf16_batch32"]]
    assert [run["batch"] for run in runs] == [1, 8, 32]
    for run in runs:
        batch = run["batch"]
        # Each row its own photo and question, through answer_many as serving calls it.
        assert run["distinct_prompts"] == batch
        assert run["new_tokens"] == 8
        assert 0 < run["new_tokens_generated"] <= batch * 8
        assert 0 <= run["rows_stopped_early"] < batch
        assert run["time_to_first_token_ms"] > 0 and run["total_s"] > 0
        assert run["tokens_per_s_per_sequence"] > 0
        assert run["tokens_per_s_aggregate"] == pytest.approx(
            run["new_tokens_generated"] / run["total_s"], rel=0.05
        )
        assert run["answers_per_s"] == pytest.approx(batch / run["total_s"], rel=0.05)
        assert run["tokens_per_s_vs_batch_1"] > 0
    assert stages["bf16"]["generation"]["batch_1"]["tokens_per_s_vs_batch_1"] == 1.0
    assert len(set(stages["bf16"]["generation"]["batch_8"]["prompt_positions"])) > 1
    bandwidth = stages["bandwidth"]
    assert bandwidth["achieved_gb_s"] > 0
    assert bandwidth["peak_gb_s"] is None and bandwidth["fraction_of_peak"] is None
    assert bandwidth["bound_tokens_per_s"] is None  # no data-sheet peak for a CPU
    assert list(bandwidth["tokens_per_s_vs_batch_1"]) == ["batch_1", "batch_8"]


def test_gpu_check_smoke_skips_nf4_without_cuda(smoke: tuple[Any, Any]) -> None:
    # As in serving, 4-bit needs CUDA and bitsandbytes; the smoke run has no CUDA.
    nf4 = smoke[1]["stages"]["nf4"]
    assert nf4["skipped"].startswith("4-bit quantization is unavailable here")
    assert "CUDA" in nf4["skipped"]


def test_gpu_check_without_cuda_skips_and_imports_no_service(tmp_path: Path) -> None:
    completed = _run(tmp_path, python_flags=("-X", "importtime"))
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    environment = report["stages"]["environment"]
    assert environment["cuda_available"] is False and environment["torch"]
    for name in STAGES[1:]:
        assert report["stages"][name]["skipped"].startswith("no CUDA device")
    imported = _imported_packages(completed.stderr)
    assert {"torch", "transformers", "skingpt"} <= imported
    assert not imported & SERVICE_PACKAGES


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """The script as a module, for its parts."""
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up while being defined.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_check_records_a_failed_stage_and_goes_on(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    report = gpu_check.Report(tmp_path, mode="smoke", preset="tiny-random", budget_s=60)

    def fail(result: dict[str, Any]) -> None:
        raise ValueError("out of memory, say")

    report.run_stage("first", fail)
    report.run_stage("second", lambda result: result.update(value=1))
    saved = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert saved["first"]["error"] == {"type": "ValueError", "message": "out of memory, say"}
    assert saved["second"]["value"] == 1


def test_gpu_check_skips_a_stage_past_the_budget(gpu_check: ModuleType, tmp_path: Path) -> None:
    report = gpu_check.Report(tmp_path, mode="full", preset="skingpt4-llama2-13b", budget_s=10)
    ran: list[str] = []

    def body(result: dict[str, Any]) -> None:
        ran.append("ran")

    report.run_stage("slow", body, estimate_s=60)
    report.run_stage("quick", body, estimate_s=1)
    assert "time budget" in report.stages["slow"]["skipped"]
    assert ran == ["ran"]


@pytest.mark.parametrize(
    ("name", "tb_s"),
    [
        ("NVIDIA H200", 4.8),
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA A100-SXM4-80GB", 2.0),
        ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA GeForce RTX 4090", 1.008),
        (None, None),
    ],
)
def test_gpu_check_knows_peak_bandwidth(
    gpu_check: ModuleType, name: str | None, tb_s: float | None
) -> None:
    assert gpu_check.peak_bandwidth_tb_s(name) == tb_s

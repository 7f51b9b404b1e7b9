"""Peak memory and start-up time of a real worker process, with the tiny and the scaled model.

For each model, a bot and the Bot API stand-in are started (as in ``benchmarks/overhead.py``),
then a worker process (``python -m skingpt.cli worker``, prefork pool of one) at the same moment
as a user sends a photo; the photo's analysis (four model calls, 32 new tokens each, sampled) is
the worker's first job. Then a few follow-ups, and the peak resident memory (``VmHWM`` in
``/proc``, the kernel's high-water mark of RSS) of the worker's main process and of its pool
child, which loads the model and answers.

The scaled model is ``benchmarks/throughput.py``'s ``cpu-scaled`` preset, written once with
random weights to a temporary folder and loaded through ``SKINGPT_WEIGHTS`` as real weights are.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python benchmarks/memory.py --out /tmp/memory
    python benchmarks/memory.py --smoke --out /tmp/memory   # the tiny model only
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs as ``python benchmarks/memory.py`` from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import time
from datetime import UTC, datetime
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.output import log_progress, publish

logger = logging.getLogger("memory")

RESULT_FILE = "memory.json"
FIRST_USER = 80_001


def _kib(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"{field} is not in /proc/<pid>/status")


def peak_rss_mib(pid: int) -> dict[str, float]:
    """The RSS high-water mark of a process and of each of its descendants, in MiB.

    Read from ``/proc`` while they run (Linux): a prefork worker's model lives in its child.
    """
    peaks: dict[str, float] = {}
    pending = [(pid, "main")]
    while pending:
        current, name = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue  # it exited meanwhile
        peaks[name] = round(_kib(status, "VmHWM") / 1024, 1)
        pending += [(int(child), f"{name}.child{n}") for n, child in enumerate(children)]
    return peaks


def measure_worker(label: str, user: int, **settings: str) -> dict[str, Any]:
    """Start-up time and peak memory of a worker with ``settings``, after it served a photo."""
    from benchmarks.processes import bot_without_workers

    settings = {"max_new_tokens": "32", "torch_threads": "1", **settings}
    # The bot refuses the untrained tiny-random model unless told this is no real service.
    with bot_without_workers(["--allow-test-model"], **settings) as pipeline:
        pipeline.agree(user)
        started = time.time()
        worker = pipeline.start_worker()
        first = pipeline.send_photo(user)
        for _ in range(2):
            pipeline.ask(user, "Is it contagious?")
        peaks = peak_rss_mib(worker.pid)
        pipeline.services.assert_alive()
    result = {
        "model": label,
        "worker_start_to_first_reply_s": round(first.recorded - started, 2),
        "peak_rss_mib": peaks,
    }
    logger.info("%s", result)
    return result


def run(*, smoke: bool) -> list[dict[str, Any]]:
    results = [measure_worker("tiny-random", FIRST_USER, model="tiny-random")]
    if smoke:
        return results
    from benchmarks.throughput import SCALED
    from skingpt.model.modeling import build_random, save_pretrained

    with TemporaryDirectory(prefix="skingpt-scaled-") as folder:
        save_pretrained(build_random(SCALED), Path(folder))
        results.append(
            measure_worker(SCALED.name, FIRST_USER + 1, model=SCALED.name, weights=folder)
        )
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for memory.json")
    parser.add_argument("--smoke", action="store_true", help="only the tiny-random model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_progress()
    report = {
        "benchmark": "memory",
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "workers": run(smoke=args.smoke),
    }
    publish(args.out, RESULT_FILE, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

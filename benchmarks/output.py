"""What the CPU benchmark scripts share: progress on stderr, figures as JSON in a file and on
stdout (``gpu_check.py`` keeps its own, as it must run alone on a GPU machine)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


def log_progress() -> None:
    """Progress lines with times on stderr, so stdout holds only the JSON."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def publish(folder: Path, name: str, report: dict[str, Any]) -> None:
    """Write ``report`` to ``folder/name`` and print it."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (folder / name).write_text(text + "\n")
    print(text)

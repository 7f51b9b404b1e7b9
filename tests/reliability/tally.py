"""The reliability suite's count of what it tried and what came through, printed at the end.

Every check records itself here: a bad input is *handled* when the person got a clear reply and
nothing crashed, a fault is *survived* when every reply still arrived exactly once, and the load
and fault tests add the messages they expected, and how many were lost or duplicated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Tally:
    bad_inputs: dict[str, bool] = field(default_factory=dict)
    faults: dict[str, bool] = field(default_factory=dict)
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextlib.contextmanager
    def bad_input(self, name: str) -> Iterator[None]:
        """Count ``name`` as tried; as handled only if the block finishes without failing."""
        with self._record(self.bad_inputs, name):
            yield

    @contextlib.contextmanager
    def fault(self, name: str) -> Iterator[None]:
        """Count the fault ``name`` as injected; as survived only if the block finishes."""
        with self._record(self.faults, name):
            yield

    def messages(self, *, expected: int, delivered: int, lost: int, duplicated: int) -> None:
        """Add the replies a test expected, and how many came, never came or came twice."""
        with self._lock:
            self.expected += expected
            self.delivered += delivered
            self.lost += lost
            self.duplicated += duplicated

    def note(self, line: str) -> None:
        """A figure worth printing with the summary (latencies, rates)."""
        with self._lock:
            self.notes.append(line)

    @contextlib.contextmanager
    def _record(self, table: dict[str, bool], name: str) -> Iterator[None]:
        with self._lock:
            table.setdefault(name, False)
        yield
        with self._lock:
            table[name] = True

    def summary(self) -> str:
        handled = sum(self.bad_inputs.values())
        survived = sum(self.faults.values())
        lines = [
            "reliability summary",
            f"  bad inputs tried / handled: {len(self.bad_inputs)} / {handled}",
            f"  faults injected / survived: {len(self.faults)} / {survived}",
            f"  replies expected / delivered: {self.expected} / {self.delivered}",
            f"  messages lost / duplicated: {self.lost} / {self.duplicated}",
        ]
        failed = [name for name, ok in {**self.bad_inputs, **self.faults}.items() if not ok]
        if failed:
            lines.append("  not handled: " + "; ".join(sorted(failed)))
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

"""The batcher: concurrent model calls decoded together, in order, each caller on its deadline.

The model here is a small recording object (the batcher's only seam); the real model's batched
decoding is covered in tests/skingpt/model/test_decoding.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

from skingpt.batching import Batcher
from skingpt.errors import DeadlinePassed
from skingpt.imaging import load_image
from skingpt.model.base import Generated, Request
from skingpt.model.scripted import load_scripted
from skingpt.pipeline import ANALYSIS, Analyzer
from skingpt.prompts import DEFAULT_QUESTION
from skingpt.settings import GenerationSettings

GENERATION = GenerationSettings(max_new_tokens=8)
# Room for whole scripted answers, so that the description is usable and every step runs.
WHOLE_ANSWERS = GenerationSettings()
IMAGE = Image.new("RGB", (8, 8))
# Long enough to notice a wait that should not happen, short enough to keep the tests quick.
WAIT = 0.3


class RecordingModel:
    """Answers each request with its own question; records every batch; can be held or made
    to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.called_at: list[float] = []
        self.running = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]:
        questions = [request.question for request in requests]
        self.batches.append(questions)
        self.called_at.append(time.monotonic())
        self.running.set()
        self.release.wait(30)
        if any("boom" in question for question in questions):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return [Generated(text=f"answer to {q}", new_tokens=3, seconds=0.0) for q in questions]

    def hold(self) -> None:
        """Let the next batch start and keep it running until :meth:`release` is set."""
        self.release.clear()
        self.running.clear()


def _request(question: str) -> Request:
    return Request(image=IMAGE, history=(), question=question, generation=GENERATION)


def _ask(batcher: Batcher, questions: Sequence[str], **kwargs: float) -> dict[str, object]:
    """Ask each question from its own thread, in order; returns each answer or error."""
    results: dict[str, object] = {}

    def ask(question: str) -> None:
        try:
            results[question] = batcher.answer(_request(question), **kwargs).text
        except Exception as error:
            results[question] = error

    threads = []
    for question in questions:
        thread = threading.Thread(target=ask, args=(question,))
        queued = batcher.waiting

        def arrived(before: int = queued, asked: str = question) -> bool:
            """Queued behind the others, or already answered in a full batch."""
            return batcher.waiting > before or asked in results

        thread.start()
        _until(arrived)
        threads.append(thread)
    for thread in threads:
        thread.join(30)
    return results


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def _in_background(batcher: Batcher, question: str) -> threading.Thread:
    thread = threading.Thread(target=batcher.answer, args=(_request(question),), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def batcher(model: RecordingModel) -> Iterator[Batcher]:
    batcher = Batcher(model, batch_size=3, batch_wait=WAIT)
    yield batcher
    model.release.set()
    batcher.close()


def test_batcher_decodes_waiting_requests_together_up_to_the_batch_size_in_order(
    model: RecordingModel, batcher: Batcher
) -> None:
    model.hold()
    first = _in_background(batcher, "q0")
    model.running.wait(10)
    asked = [f"q{n}" for n in range(1, 8)]
    waiter = threading.Thread(target=lambda: results.update(_ask(batcher, asked)))
    results: dict[str, object] = {}
    waiter.start()
    _until(lambda: batcher.waiting == len(asked))
    model.release.set()
    waiter.join(30)
    first.join(30)
    assert model.batches == [["q0"], ["q1", "q2", "q3"], ["q4", "q5", "q6"], ["q7"]]
    assert results == {q: f"answer to {q}" for q in asked}
    assert (batcher.batches, batcher.answered) == (4, 8)
    assert batcher.sizes == {1: 2, 3: 2}


def test_a_lone_request_waits_for_company_at_most_the_batch_wait(
    model: RecordingModel, batcher: Batcher
) -> None:
    asked_at = time.monotonic()
    answer = batcher.answer(_request("alone"))
    waited = model.called_at[0] - asked_at
    assert answer.text == "answer to alone" and model.batches == [["alone"]]
    assert WAIT * 0.9 <= waited < WAIT + 2.0  # a generous upper bound on a busy machine


def test_a_full_batch_starts_without_waiting(model: RecordingModel) -> None:
    batcher = Batcher(model, batch_size=2, batch_wait=60.0)
    try:
        results = _ask(batcher, ["a", "b"])
    finally:
        batcher.close()
    assert results == {"a": "answer to a", "b": "answer to b"}
    assert model.batches == [["a", "b"]]


def test_a_failing_batch_fails_every_caller_in_it_and_the_batcher_serves_on(
    model: RecordingModel, batcher: Batcher
) -> None:
    model.hold()
    first = _in_background(batcher, "warm-up")
    model.running.wait(10)
    results: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: results.update(_ask(batcher, ["x", "boom", "y"])))
    waiter.start()
    _until(lambda: batcher.waiting == 3)
    model.release.set()
    waiter.join(30)
    first.join(30)
    assert model.batches[1] == ["x", "boom", "y"]
    errors = list(results.values())
    assert all(isinstance(error, RuntimeError) for error in errors), errors
    assert len({id(error) for error in errors}) == 3  # each caller raises its own copy
    assert all("nan" in str(error) for error in errors)
    assert batcher.answer(_request("after")).text == "answer to after"


def test_a_caller_past_its_deadline_times_out_and_its_request_never_runs(
    model: RecordingModel, batcher: Batcher
) -> None:
    model.hold()
    first = _in_background(batcher, "long")
    model.running.wait(10)
    with pytest.raises(DeadlinePassed):
        batcher.answer(_request("late"), time.monotonic() + 0.2)
    assert batcher.waiting == 0
    model.release.set()
    first.join(30)
    assert batcher.answer(_request("next")).text == "answer to next"
    assert model.batches == [["long"], ["next"]]
    with pytest.raises(DeadlinePassed):
        batcher.answer(_request("already late"), time.monotonic() - 1)
    assert batcher.answered == 2


def test_a_caller_whose_batch_runs_past_its_deadline_times_out(
    model: RecordingModel, batcher: Batcher
) -> None:
    model.hold()
    threading.Timer(1.0, model.release.set).start()
    with pytest.raises(DeadlinePassed):
        batcher.answer(_request("slow"), time.monotonic() + WAIT + 0.2)
    assert model.batches == [["slow"]]  # it had started: the batch runs on without the caller


def test_the_watchdog_reports_a_batch_running_past_the_time_limit(
    model: RecordingModel,
) -> None:
    overruns: list[float] = []
    batcher = Batcher(
        model, batch_size=2, batch_wait=0.0, time_limit=0.2, on_overrun=overruns.append
    )
    model.hold()
    _in_background(batcher, "stuck")
    _until(lambda: bool(overruns))
    model.release.set()
    batcher.close()
    assert overruns[0] > 0.2


def test_the_default_watchdog_ends_the_process_after_saying_why() -> None:
    stuck = textwrap.dedent(
        """
        import logging, time
        from skingpt.batching import Batcher

        class Stuck:
            def answer_many(self, requests):
                time.sleep(60)
                return []

        logging.basicConfig(level=logging.INFO)
        Batcher(Stuck(), batch_size=1, batch_wait=0.0, time_limit=0.5).answer(None)
        """
    )
    ended = subprocess.run(
        [sys.executable, "-c", stuck], capture_output=True, text=True, timeout=50, check=False
    )
    assert ended.returncode == 70, ended.stderr
    assert "past the time limit" in ended.stderr


@pytest.fixture(scope="module")
def scripted_photo() -> Image.Image:
    return load_image(
        (Path(__file__).parents[1] / "data" / "psoriasis_01.jpg").read_bytes(), max_pixels=10**8
    )


def test_an_analysis_through_the_batcher_is_the_same_as_without(
    scripted_photo: Image.Image,
) -> None:
    script = Path(__file__).parents[1] / "data" / "scripted" / "samples.toml"
    model = load_scripted(script)
    model.seconds_per_answer = 0.0
    alone = Analyzer(model, WHOLE_ANSWERS).analyse(
        scripted_photo, [], DEFAULT_QUESTION, kind=ANALYSIS
    )
    batcher = Batcher(model, batch_size=4, batch_wait=0.01)
    try:
        batched = Analyzer(model, WHOLE_ANSWERS, batcher=batcher)
        result = batched.analyse(scripted_photo, [], DEFAULT_QUESTION, kind=ANALYSIS)
    finally:
        batcher.close()
    assert result.answers == alone.answers and len(result.answers) == 4
    assert result.turns == alone.turns
    assert batcher.answered == 4


def test_an_analysis_past_its_deadline_stops_between_model_calls(
    scripted_photo: Image.Image,
) -> None:
    script = Path(__file__).parents[1] / "data" / "scripted" / "samples.toml"
    model = load_scripted(script)
    model.seconds_per_answer = WAIT
    steps: list[int] = []
    with pytest.raises(DeadlinePassed):
        Analyzer(model, WHOLE_ANSWERS).analyse(
            scripted_photo,
            [],
            DEFAULT_QUESTION,
            kind=ANALYSIS,
            on_step=lambda step, _: steps.append(step),
            deadline=time.monotonic() + WAIT * 1.5,
        )
    assert steps == [1, 2]

"""The answering task, run in this process against real Redis: idempotent and never silent."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from skingpt.imaging import encode_png, load_image, normalise
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Store
from worker.app import ANSWER_TASK, create_celery
from worker.tasks import register_tasks


@pytest.fixture
def setup(redis_url: str, key_prefix: str) -> tuple[Store, Callable[[str], str]]:
    settings = Settings.from_env(
        {}, redis_url=redis_url, key_prefix=key_prefix, max_new_tokens=8, seed=1, torch_threads=1
    )
    store = Store.from_url(
        redis_url, prefix=key_prefix, retention_seconds=600, turn_hold_seconds=900
    )
    app = create_celery(settings)
    holder = register_tasks(app, settings, store)
    holder.start_loading()
    holder.get(timeout=120)  # a loader thread still running at exit would abort the interpreter
    task = app.tasks[ANSWER_TASK]
    return store, lambda job_id: str(task(job_id))


def _job(
    store: Store, photo: Path, question: str = "What is this?", kind: str = "followup"
) -> tuple[str, str]:
    image = normalise(load_image(photo.read_bytes(), max_pixels=10**8), max_side=1024)
    conv = store.pseudonym(1, 2)
    case = store.start_case(conv, encode_png(image))
    job = store.new_job(
        conv=conv, case=case, chat_id=1, reply_to=None, question=question, kind=kind
    )
    store.snapshot_history(job)
    return case, job


def test_answer_turn_answers_once_even_if_delivered_twice(
    setup: tuple[Store, Callable[[str], str]], sample_photos: list[Path]
) -> None:
    store, run = setup
    store.ensure_outbox_group()
    case, job = _job(store, sample_photos[0])
    assert run(job) == Outcome.ANSWERED.value
    assert run(job) == "duplicate"
    loaded = store.load_job(job)
    assert loaded is not None and loaded.untrained and loaded.answer
    assert loaded.attempts == 1
    assert len(store.turns(case)) == 1
    assert [j for _, j in store.read_outbox("test", block_ms=10)] == [job]


def test_answer_turn_reports_a_photo_deleted_by_retention(
    setup: tuple[Store, Callable[[str], str]], sample_photos: list[Path]
) -> None:
    store, run = setup
    case, job = _job(store, sample_photos[0])
    store.client.delete(store.key("case", case, "images"))
    assert run(job) == Outcome.PHOTO_EXPIRED.value
    loaded = store.load_job(job)
    assert loaded is not None and loaded.outcome is Outcome.PHOTO_EXPIRED


def test_answer_turn_ignores_a_job_that_no_longer_exists(
    setup: tuple[Store, Callable[[str], str]],
) -> None:
    _, run = setup
    assert run("0" * 32) == "expired"


def test_answer_turn_gives_up_on_a_job_that_keeps_killing_its_worker(
    setup: tuple[Store, Callable[[str], str]], sample_photos: list[Path]
) -> None:
    store, run = setup
    store.ensure_outbox_group()
    _, job = _job(store, sample_photos[0])
    for _ in range(3):  # three deliveries whose worker process died mid-job
        store.mark_running(job)
    assert run(job) == Outcome.FAILED.value
    loaded = store.load_job(job)
    assert loaded is not None and loaded.outcome is Outcome.FAILED and loaded.answer == ""
    assert [j for _, j in store.read_outbox("test", block_ms=10)] == [job]


def test_answer_turn_replies_when_the_model_raises(
    setup: tuple[Store, Callable[[str], str]],
    sample_photos: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, run = setup
    _, job = _job(store, sample_photos[0])

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("skingpt.pipeline.Analyzer.answer", out_of_memory)
    assert run(job) == Outcome.FAILED.value
    _, healthy = _job(store, sample_photos[1])
    monkeypatch.undo()
    assert run(healthy) == Outcome.ANSWERED.value


def test_a_first_analysis_asks_the_clinical_questions_in_context(
    setup: tuple[Store, Callable[[str], str]],
    sample_photos: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skingpt import safety
    from skingpt.prompts import CLINICAL_QUESTIONS

    store, run = setup
    # Judge every tiny-random answer usable, so that all the planned calls run.
    monkeypatch.setattr(safety, "judge_answer", lambda text, language: None)
    case, job = _job(store, sample_photos[2], question="Does it itch?", kind="analysis")
    assert run(job) == Outcome.ANSWERED.value
    loaded = store.load_job(job)
    assert loaded is not None
    assert list(loaded.answers) == [key for key, _ in CLINICAL_QUESTIONS] + ["question"]
    asked = [turn.question for turn in store.turns(case)]
    assert asked == [text for _, text in CLINICAL_QUESTIONS] + ["Does it itch?"]
    assert (loaded.step, loaded.steps) == (5, 5)


def test_a_job_that_waited_too_long_is_answered_with_an_apology_without_running(
    setup: tuple[Store, Callable[[str], str]], sample_photos: list[Path]
) -> None:
    store, run = setup
    store.ensure_outbox_group()
    case, job = _job(store, sample_photos[0])
    store.client.hset(store.key("job", job), "queued", time.time() - 3600)
    assert run(job) == Outcome.WAITED_TOO_LONG.value
    loaded = store.load_job(job)
    assert loaded is not None and loaded.outcome is Outcome.WAITED_TOO_LONG
    assert loaded.attempts == 0 and store.turns(case) == []  # the model never ran
    assert job in [j for _, j in store.read_outbox("test", block_ms=10)]

"""What a worker's heartbeat says about its jobs when several run at once in threads."""

from __future__ import annotations

import threading

from skingpt.health import JobActivity


def test_job_activity_shows_the_oldest_running_job_until_every_job_has_finished() -> None:
    activity = JobActivity()
    idle_at_start = activity.fields()["idle_since"]
    first_started = threading.Event()
    first_may_finish = threading.Event()

    def first_job() -> None:
        activity.started()
        first_started.set()
        first_may_finish.wait(10)
        activity.finished()

    first = threading.Thread(target=first_job)
    first.start()
    first_started.wait(10)
    oldest = activity.fields()["job_since"]
    assert oldest

    second_started = threading.Event()
    second_may_finish = threading.Event()

    def second_job() -> None:
        activity.started()
        second_started.set()
        second_may_finish.wait(10)
        activity.finished()

    second = threading.Thread(target=second_job)
    second.start()
    second_started.wait(10)
    assert activity.fields()["job_since"] == oldest  # the older job still shows

    first_may_finish.set()
    first.join(10)
    fields = activity.fields()
    assert float(fields["job_since"]) >= float(oldest)  # now the second job's start
    assert fields["idle_since"] == idle_at_start  # one job still runs: not idle

    second_may_finish.set()
    second.join(10)
    fields = activity.fields()
    assert fields["job_since"] == ""
    assert float(fields["idle_since"]) >= float(idle_at_start)

"""The Redis store: pseudonymous keys, one turn at a time per user, answers recorded once."""

from __future__ import annotations

import json

import redis

from skingpt.prompts import Turn
from skingpt.replies import Outcome
from skingpt.store import Store, case_code


def _store(redis_url: str, prefix: str, retention: int = 600) -> Store:
    return Store.from_url(
        redis_url, prefix=prefix, retention_seconds=retention, turn_hold_seconds=900
    )


def test_pseudonym_is_stable_and_reveals_no_id(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    conv = store.pseudonym(123456789, 987654321)
    assert conv == _store(redis_url, key_prefix).pseudonym(123456789, 987654321)
    assert conv != store.pseudonym(123456789, 1)
    assert "123456789" not in conv and "987654321" not in conv


def test_case_data_expires_with_the_retention_setting(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix, retention=120)
    conv = store.pseudonym(1, 1)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=1, reply_to=5, question="What?")
    client = redis.Redis.from_url(redis_url)
    store.set_prefs(conv, consented=True, language="ar")
    keys = [
        store.key("case", case, "images"),
        store.key("case", case),
        store.key("conv", conv),
        store.key("conv", conv, "prefs"),
        store.key("job", job),
    ]
    for key in keys:
        assert 0 < client.ttl(key) <= 120, key
    assert store.open_case(conv) == case
    client.delete(store.key("case", case, "images"))
    assert store.open_case(conv) is None


def test_jobs_of_one_user_run_one_at_a_time_in_order(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    conv = store.pseudonym(7, 7)
    case = store.start_case(conv, b"png")
    jobs = [
        store.new_job(conv=conv, case=case, chat_id=7, reply_to=None, question=q)
        for q in ("a", "b", "c")
    ]
    assert [store.claim_turn(conv, job) for job in jobs] == [True, False, False]
    assert store.release_turn(conv, jobs[0]) == jobs[1]
    assert store.release_turn(conv, jobs[0]) is None  # a stale release changes nothing
    assert store.release_turn(conv, jobs[1]) == jobs[2]
    assert store.release_turn(conv, jobs[2]) is None
    assert store.claim_turn(conv, "later") is True


def test_complete_job_records_the_turn_and_queues_one_reply(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    conv = store.pseudonym(9, 9)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=9, reply_to=3, question="What is it?")
    turn = Turn("What is it?", "Eczema.")
    assert store.complete_job(
        job, Outcome.ANSWERED, {"answer": "Eczema."}, turns=[turn], model_name="m", seconds=2.5
    )
    assert not store.complete_job(job, Outcome.ANSWERED, {"answer": "Again."}, turns=[turn])
    loaded = store.load_job(job)
    assert loaded is not None
    assert (loaded.status, loaded.outcome, loaded.answer) == ("done", Outcome.ANSWERED, "Eczema.")
    assert [(t.question, t.answer) for t in store.turns(case)] == [("What is it?", "Eczema.")]
    assert store.recent_seconds("followup") == [2.5]
    entries = store.read_outbox("reader", block_ms=10)
    assert [job_id for _, job_id in entries] == [job]
    store.ack_outbox(entries[0][0])
    assert store.read_outbox("reader", block_ms=10, pending=True) == []

    follow_up = store.new_job(conv=conv, case=case, chat_id=9, reply_to=4, question="Why?")
    store.snapshot_history(follow_up)
    raw = redis.Redis.from_url(redis_url).hget(store.key("job", follow_up), "history")
    assert json.loads(raw or b"") == [{"q": "What is it?", "a": "Eczema."}]


def test_failed_jobs_leave_no_turn_in_the_history(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    conv = store.pseudonym(10, 10)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=10, reply_to=None, question="Q")
    assert store.complete_job(job, Outcome.FAILED) is True
    assert store.turns(case) == []


def test_unread_replies_can_be_taken_over_by_another_bot(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    conv = store.pseudonym(11, 11)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=11, reply_to=None, question="Q")
    store.complete_job(job, Outcome.ANSWERED, {"answer": "A"})
    assert [j for _, j in store.read_outbox("crashed-bot", block_ms=10)] == [job]
    assert [j for _, j in store.claim_stale_outbox("new-bot", min_idle_ms=0)] == [job]


def test_forget_deletes_everything_of_one_pair_and_nothing_else(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    mine, theirs = store.pseudonym(1, 10), store.pseudonym(1, 11)  # same group, two users
    for conv in (mine, theirs):
        case = store.start_case(conv, b"png")
        job = store.new_job(conv=conv, case=case, chat_id=1, reply_to=None, question="Q")
        store.complete_job(job, Outcome.ANSWERED, {"answer": "A"}, turns=[Turn("Q", "A")])
        store.set_prefs(conv, consented=True)
        store.hold_photos(conv, [b"png"], "")
        store.claim_turn(
            conv, store.new_job(conv=conv, case=case, chat_id=1, reply_to=None, question="Later")
        )
    assert store.forget(mine) > 0
    client = redis.Redis.from_url(redis_url)
    left = [k.decode() for k in client.scan_iter(match=f"{key_prefix}:*", count=500)]
    assert not [k for k in left if mine in k]
    assert store.open_case(mine) is None and store.open_case(theirs) is not None
    jobs = [k for k in left if ":job:" in k]
    assert len(jobs) == 2 and all(store.load_job(k.rsplit(":", 1)[1]).conv == theirs for k in jobs)  # type: ignore[union-attr]
    assert store.forget(mine) == 0


def test_a_forgotten_job_in_flight_is_neither_answered_nor_brought_back(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    conv = store.pseudonym(2, 2)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=2, reply_to=None, question="Q")
    assert store.mark_running(job) == 1
    store.forget(conv)
    assert store.mark_running(job) == 0
    store.forget_attempt(job)
    store.mark_part_sent(job, 1)
    store.mark_delivered(job)
    assert store.complete_job(job, Outcome.ANSWERED, {"answer": "A"}) is False
    assert store.load_job(job) is None
    assert store.turns(case) == []
    assert store.read_outbox("reader", block_ms=10) == []
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"{key_prefix}:job:*"))


def test_prefs_are_remembered_and_forgotten(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    conv = store.pseudonym(20, 20)
    assert not store.prefs(conv).consented
    store.set_prefs(conv, consented=True, language="es")
    store.set_prefs(conv, health_worker=True)
    prefs = store.prefs(conv)
    assert (prefs.consented, prefs.language, prefs.health_worker) == (True, "es", True)
    store.forget(conv)
    assert store.prefs(conv).consented is False


def test_photos_are_encrypted_at_rest_with_a_key(redis_url: str, key_prefix: str) -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    store = Store.from_url(
        redis_url,
        prefix=key_prefix,
        retention_seconds=600,
        turn_hold_seconds=900,
        encryption_key=key,
    )
    conv = store.pseudonym(21, 21)
    photo = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
    case = store.start_case(conv, photo)
    raw = redis.Redis.from_url(redis_url).lindex(store.key("case", case, "images"), 0)
    assert raw is not None and b"PNG" not in raw and b"pixels" not in raw
    assert store.load_image(case) == photo
    token = store.hold_photos(conv, [photo], "caption")
    stranger = store.pseudonym(99, 99)
    assert store.take_photos(token, stranger) is None  # not theirs
    held = store.take_photos(token, conv)
    assert held is not None and (held.images, held.caption, held.again) == (
        [photo],
        "caption",
        False,
    )
    again = store.take_photos(token, conv)
    assert again is not None and again.again and again.images == []
    assert store.take_photos(token, stranger) is None
    # Another key cannot read them: the photo reads as gone, never as garbage.
    other = Store.from_url(
        redis_url,
        prefix=key_prefix,
        retention_seconds=600,
        turn_hold_seconds=900,
        encryption_key=Fernet.generate_key().decode(),
    )
    assert other.load_image(case) is None


def test_case_photos_and_the_one_the_model_reads(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    conv = store.pseudonym(22, 22)
    case = store.start_case(conv, b"first")
    assert store.add_photo(case, b"second", primary=False) == 2
    assert store.load_image(case) == b"first"
    store.add_photo(case, b"third", primary=True)
    assert store.load_image(case) == b"third"
    meta = store.case(case)
    assert meta is not None and meta.photos == 3 and meta.code == case_code(case)
    assert len(meta.code) == 7 and meta.code[3] == "-"
    assert store.close_case(conv) is True
    assert store.open_case(conv) is None
    assert store.close_case(conv) is False


def test_place_in_line_follows_the_queue(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    jobs = []
    for user in (31, 32, 33):
        conv = store.pseudonym(user, user)
        case = store.start_case(conv, b"png")
        job = store.new_job(
            conv=conv, case=case, chat_id=user, reply_to=None, question="Q", kind="analysis"
        )
        store.enqueue(job)
        jobs.append(job)
    assert [store.place_in_line(j, max_age=600) for j in jobs] == [1, 2, 3]
    assert store.kinds_in_line(2) == ["analysis", "analysis"]
    store.mark_running(jobs[0])
    assert store.running_jobs() == 1
    store.complete_job(jobs[0], Outcome.FAILED)
    assert [store.place_in_line(j, max_age=600) for j in jobs] == [None, 1, 2]
    store.forget(store.pseudonym(32, 32))
    assert store.place_in_line(jobs[2], max_age=600) == 1


def test_memory_use_reads_redis_and_is_unknown_where_info_is_missing(
    redis_url: str, key_prefix: str
) -> None:
    import fakeredis

    used, _limit = _store(redis_url, key_prefix).memory_use()
    assert used > 0
    offline = Store(
        fakeredis.FakeRedis(), prefix=key_prefix, retention_seconds=600, turn_hold_seconds=900
    )
    assert offline.memory_use() == (0, 0)

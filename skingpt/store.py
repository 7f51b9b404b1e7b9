"""Everything the bot and the workers share, kept in Redis with a time-to-live.

Keys (``P`` is the configured prefix):

``P:conv:<conv>``            hash: the open case of one (chat, user) pair
``P:conv:<conv>:inflight``   the job of that pair being answered now (one at a time, in order)
``P:conv:<conv>:waiting``    list: jobs of that pair queued behind it
``P:conv:<conv>:keys``       set: every case and job key of that pair, for ``/forget``
``P:case:<case>:image``      the normalised photo, PNG
``P:case:<case>:turns``      list: finished question/answer turns, JSON
``P:job:<job>``              hash: one question and, once answered, its answer
``P:outbox``                 stream: finished jobs for the bot to send
``P:pseudonym-key``          the secret behind pseudonymous ids

Conversations are keyed by a keyed hash of the chat and user ids, never the raw ids. Every key
that holds a photo, a question or an answer expires ``retention_seconds`` after the last
activity of its case. The job hash keeps the Telegram chat id, which sending the reply needs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from skingpt.prompts import Turn
from skingpt.replies import Outcome

logger = logging.getLogger(__name__)

OUTBOX_GROUP = "senders"

# Marks a job answered, records the turn and queues the reply, all at once and only once.
_COMPLETE = """
local job = KEYS[1]
if redis.call('HGET', job, 'status') == 'done' then return 0 end
if redis.call('EXISTS', job) == 0 then return -1 end
redis.call('HSET', job, 'status', 'done', 'outcome', ARGV[1], 'answer', ARGV[2],
           'model', ARGV[3], 'untrained', ARGV[4], 'finished', ARGV[5])
if ARGV[1] == 'answered' then
  local turn = cjson.encode({q = redis.call('HGET', job, 'question'), a = ARGV[2]})
  redis.call('RPUSH', KEYS[2], turn)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('XADD', KEYS[3], '*', 'job', ARGV[7])
return 1
"""

# Counts a delivery of a job to a worker, unless the job was deleted (expired or forgotten).
_MARK_RUNNING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running')
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# Changes a field of a job only while the job exists, so a deleted job is never brought back.
_UPDATE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'incr' then return redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# Deletes everything stored about one pair: its cases, jobs and conversation keys.
_FORGET = """
local keys = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, key in ipairs(keys) do deleted = deleted + redis.call('DEL', key) end
for i = 2, #KEYS do deleted = deleted + redis.call('DEL', KEYS[i]) end
return deleted + redis.call('DEL', KEYS[1])
"""

# Takes the pair's turn if nobody holds it, else joins the line behind it.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 0
"""

# Releases the pair's turn held by ARGV[1] and hands it to the next job in line, if any.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
local nxt = redis.call('LPOP', KEYS[2])
if nxt then
  redis.call('SET', KEYS[1], nxt, 'EX', ARGV[2])
  return nxt
end
redis.call('DEL', KEYS[1])
return false
"""


@dataclass(frozen=True)
class Job:
    """One question waiting for, or holding, its answer."""

    job_id: str
    conv: str
    case: str
    chat_id: int
    reply_to: int | None
    question: str
    history: list[Turn] = field(default_factory=list)
    status: str = "new"
    outcome: Outcome | None = None
    answer: str = ""
    model_name: str = ""
    untrained: bool = False
    delivered: bool = False
    attempts: int = 0
    parts_sent: int = 0


class Store:
    """Typed access to the keys above; every method is one or a few Redis round trips.

    The client is synchronous and thread-safe; the bot calls it through ``asyncio.to_thread``.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, retention_seconds: int, turn_hold_seconds: int
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention = retention_seconds
        self.turn_hold = turn_hold_seconds
        self._pseudonym_key: bytes | None = None
        self._complete = client.register_script(_COMPLETE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._mark_running = client.register_script(_MARK_RUNNING)
        self._forget = client.register_script(_FORGET)
        self._update_job = client.register_script(_UPDATE_JOB)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, retention_seconds: int, turn_hold_seconds: int
    ) -> Store:
        client = redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
        return cls(
            client,
            prefix=prefix,
            retention_seconds=retention_seconds,
            turn_hold_seconds=turn_hold_seconds,
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def pseudonym(self, chat_id: int, user_id: int) -> str:
        """A stable id for one user in one chat that reveals neither id."""
        if self._pseudonym_key is None:
            name = self.key("pseudonym-key")
            self.client.set(name, secrets.token_bytes(32), nx=True)
            stored: Any = self.client.get(name)
            self._pseudonym_key = bytes(stored)
        digest = hmac.new(self._pseudonym_key, f"{chat_id}:{user_id}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    # --- cases: one photo and the questions about it -------------------------------------

    def start_case(self, conv: str, image_png: bytes) -> str:
        """Store a new photo as the pair's open case and return the case id."""
        case = uuid.uuid4().hex
        with self.client.pipeline() as pipe:
            pipe.set(self.key("case", case, "image"), image_png, ex=self.retention)
            pipe.hset(self.key("conv", conv), mapping={"case": case, "updated": time.time()})
            pipe.expire(self.key("conv", conv), self.retention)
            case_keys = (self.key("case", case, "image"), self.key("case", case, "turns"))
            self._track(pipe, conv, *case_keys)
            pipe.execute()
        return case

    def forget(self, conv: str) -> int:
        """Delete every photo, question, answer and job of one pair; returns the keys deleted."""
        own = [
            self.key("conv", conv, "keys"),
            self.key("conv", conv),
            self.key("conv", conv, "inflight"),
            self.key("conv", conv, "waiting"),
        ]
        return int(self._forget(keys=own))

    def _track(self, pipe: Any, conv: str, *keys: str) -> None:
        pipe.sadd(self.key("conv", conv, "keys"), *keys)
        pipe.expire(self.key("conv", conv, "keys"), self.retention)

    def open_case(self, conv: str) -> str | None:
        """The pair's case whose photo is still stored, if any; touching it keeps it alive."""
        raw: Any = self.client.hget(self.key("conv", conv), "case")
        if raw is None:
            return None
        case = _text(raw)
        with self.client.pipeline() as pipe:
            pipe.expire(self.key("case", case, "image"), self.retention)
            pipe.expire(self.key("case", case, "turns"), self.retention)
            pipe.expire(self.key("conv", conv), self.retention)
            alive = pipe.execute()[0]
        return case if alive else None

    def load_image(self, case: str) -> bytes | None:
        data: Any = self.client.get(self.key("case", case, "image"))
        return bytes(data) if data is not None else None

    def turns(self, case: str) -> list[Turn]:
        raw: Any = self.client.lrange(self.key("case", case, "turns"), 0, -1)
        return [Turn(question=t["q"], answer=t["a"]) for t in map(json.loads, raw)]

    # --- jobs ----------------------------------------------------------------------------

    def new_job(
        self, *, conv: str, case: str, chat_id: int, reply_to: int | None, question: str
    ) -> str:
        job_id = uuid.uuid4().hex
        fields: dict[Any, Any] = {
            "conv": conv,
            "case": case,
            "chat_id": chat_id,
            "reply_to": "" if reply_to is None else reply_to,
            "question": question,
            "history": "[]",
            "status": "new",
            "created": time.time(),
        }
        with self.client.pipeline() as pipe:
            pipe.hset(self.key("job", job_id), mapping=fields)
            pipe.expire(self.key("job", job_id), self.retention)
            self._track(pipe, conv, self.key("job", job_id))
            pipe.execute()
        return job_id

    def claim_turn(self, conv: str, job_id: str) -> bool:
        """True if the job may run now; False if it waits behind the pair's earlier job."""
        keys = [self.key("conv", conv, "inflight"), self.key("conv", conv, "waiting")]
        return bool(self._claim(keys=keys, args=[job_id, self.turn_hold]))

    def release_turn(self, conv: str, job_id: str) -> str | None:
        """Hand the pair's turn to the next waiting job and return its id."""
        keys = [self.key("conv", conv, "inflight"), self.key("conv", conv, "waiting")]
        nxt = self._release(keys=keys, args=[job_id, self.turn_hold])
        return _text(nxt) if nxt else None

    def snapshot_history(self, job_id: str) -> None:
        """Copy the case's finished turns into the job just before it is queued."""
        case: Any = self.client.hget(self.key("job", job_id), "case")
        if case is None:
            return
        turns = [{"q": t.question, "a": t.answer} for t in self.turns(_text(case))]
        job = [self.key("job", job_id)]
        self._update_job(keys=job, args=["set", "history", json.dumps(turns)])
        self._update_job(keys=job, args=["set", "status", "queued"])

    def load_job(self, job_id: str) -> Job | None:
        raw: Any = self.client.hgetall(self.key("job", job_id))
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        if "conv" not in data:
            return None  # only a stray counter is left of a deleted job
        return Job(
            job_id=job_id,
            conv=data["conv"],
            case=data["case"],
            chat_id=int(data["chat_id"]),
            reply_to=int(data["reply_to"]) if data.get("reply_to") else None,
            question=data["question"],
            history=[Turn(question=t["q"], answer=t["a"]) for t in json.loads(data["history"])],
            status=data["status"],
            outcome=Outcome(data["outcome"]) if data.get("outcome") else None,
            answer=data.get("answer", ""),
            model_name=data.get("model", ""),
            untrained=data.get("untrained") == "1",
            delivered=data.get("delivered") == "1",
            attempts=int(data.get("attempts", 0)),
            parts_sent=int(data.get("parts_sent", 0)),
        )

    def mark_running(self, job_id: str) -> int:
        """Count one more delivery of the job to a worker; 0 if the job no longer exists."""
        return int(self._mark_running(keys=[self.key("job", job_id)]))

    def take_held(self, job_id: str) -> bool:
        """True only the first time a held job is released."""
        job = self.key("job", job_id)
        return bool(self.client.exists(job)) and bool(self.client.hsetnx(job, "released", 1))

    def forget_attempt(self, job_id: str) -> None:
        """Take back the count of a delivery that did not run the job (model still loading)."""
        self._update_job(keys=[self.key("job", job_id)], args=["incr", "attempts", -1])

    def complete_job(
        self,
        job_id: str,
        outcome: Outcome,
        answer: str = "",
        *,
        model_name: str = "",
        untrained: bool = False,
    ) -> bool:
        """Record the answer and queue the reply; False if the job was already complete."""
        case: Any = self.client.hget(self.key("job", job_id), "case")
        turns_key = self.key("case", _text(case), "turns") if case else self.key("none")
        done = self._complete(
            keys=[self.key("job", job_id), turns_key, self.key("outbox")],
            args=[
                outcome.value,
                answer,
                model_name,
                int(untrained),
                time.time(),
                self.retention,
                job_id,
            ],
        )
        return bool(done == 1)

    # --- the outbox: finished jobs for the bot to send --------------------------------------

    def ensure_outbox_group(self) -> None:
        try:
            self.client.xgroup_create(self.key("outbox"), OUTBOX_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read_outbox(
        self, consumer: str, *, block_ms: int, count: int = 16, pending: bool = False
    ) -> list[tuple[str, str]]:
        """Entries for this consumer: new ones, or with ``pending`` its unacknowledged ones."""
        response: Any = self.client.xreadgroup(
            OUTBOX_GROUP,
            consumer,
            {self.key("outbox"): "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        entries: list[tuple[str, str]] = []
        for _stream, messages in response or []:
            for entry_id, fields in messages:
                if fields:
                    entries.append((_text(entry_id), _text(fields[b"job"])))
        return entries

    def claim_stale_outbox(self, consumer: str, *, min_idle_ms: int) -> list[tuple[str, str]]:
        """Take over entries that another bot process read but never acknowledged."""
        claimed: Any = self.client.xautoclaim(
            self.key("outbox"), OUTBOX_GROUP, consumer, min_idle_time=min_idle_ms, count=32
        )
        return [(_text(entry), _text(fields[b"job"])) for entry, fields in claimed[1] if fields]

    def ack_outbox(self, entry_id: str) -> None:
        with self.client.pipeline() as pipe:
            pipe.xack(self.key("outbox"), OUTBOX_GROUP, entry_id)
            pipe.xdel(self.key("outbox"), entry_id)
            pipe.execute()

    def mark_part_sent(self, job_id: str, parts: int) -> None:
        """Record how many messages of a long reply went out, so a retry sends only the rest."""
        self._update_job(keys=[self.key("job", job_id)], args=["set", "parts_sent", parts])

    def mark_delivered(self, job_id: str) -> None:
        self._update_job(keys=[self.key("job", job_id)], args=["set", "delivered", 1])


def _text(value: Any) -> str:
    """Redis answers bytes; keys and ids are ASCII text."""
    return value.decode() if isinstance(value, bytes) else str(value)

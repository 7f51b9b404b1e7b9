"""Everything the bot and the workers share, kept in Redis with a time-to-live.

Keys (``P`` is the configured prefix):

``P:conv:<conv>``            hash: the open case of one (chat, user) pair
``P:conv:<conv>:prefs``      hash: consent, language and mode of that pair
``P:conv:<conv>:inflight``   the job of that pair being answered now (one at a time, in order)
``P:conv:<conv>:waiting``    list: jobs of that pair queued behind it
``P:conv:<conv>:keys``       set: every case, job and photo key of that pair, for ``/forget``
``P:case:<case>``            hash: the case's number, photo count and the photo the model reads
``P:case:<case>:images``     list: the case's normalised photos, PNG (encrypted with a key)
``P:case:<case>:turns``      list: finished question/answer turns, JSON
``P:case:<case>:embeddings`` hash: image embeddings of the case's photos, by model and photo
``P:photo:<token>``          a photo waiting for the person to say which case it belongs to
``P:job:<job>``              hash: one question and, once answered, its answer
``P:queue``                  sorted set: every queued or running job, by the time it was queued
``P:stats:<kind>``           list: recent service times in seconds, newest first
``P:outbox``                 stream: finished jobs for the bot to send
``P:pseudonym-key``          the secret behind pseudonymous ids

Conversations are keyed by a keyed hash of the chat and user ids, never the raw ids. Every key
that holds a photo, a question or an answer expires ``retention_seconds`` after the last
activity of its case. The job hash keeps the Telegram chat id, which sending the reply needs.
With an encryption key configured, photos are stored encrypted (Fernet: AES-128-CBC with an
HMAC-SHA256 tag); a key that cannot decrypt them reads as an expired photo.
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
from cryptography.fernet import Fernet, InvalidToken

from skingpt.prompts import Turn
from skingpt.replies import Outcome

logger = logging.getLogger(__name__)

OUTBOX_GROUP = "senders"

# Marks a job answered, records its turns and queues the reply, all at once and only once;
# the job leaves the queue and, when it ran, its service time joins the recent ones.
_COMPLETE = """
local job = KEYS[1]
if redis.call('HGET', job, 'status') == 'done' then return 0 end
redis.call('ZREM', KEYS[4], ARGV[7])
if redis.call('EXISTS', job) == 0 then return -1 end
redis.call('HSET', job, 'status', 'done', 'outcome', ARGV[1], 'answers', ARGV[2],
           'model', ARGV[3], 'untrained', ARGV[4], 'finished', ARGV[5])
if ARGV[1] == 'answered' then
  for _, turn in ipairs(cjson.decode(ARGV[8])) do
    redis.call('RPUSH', KEYS[2], cjson.encode(turn))
  end
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if tonumber(ARGV[9]) > 0 then
  redis.call('LPUSH', KEYS[5], ARGV[9])
  redis.call('LTRIM', KEYS[5], 0, 49)
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

# Deletes everything stored about one pair: its cases, jobs, photos and conversation keys, and
# takes its jobs out of the queue.
_FORGET = """
local keys = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, key in ipairs(keys) do
  local job = string.match(key, ':job:(%x+)$')
  if job then redis.call('ZREM', ARGV[1], job) end
  deleted = deleted + redis.call('DEL', key)
end
for i = 2, #KEYS do deleted = deleted + redis.call('DEL', KEYS[i]) end
return deleted + redis.call('DEL', KEYS[1])
"""

# Cancels the pair's jobs not yet answered to the person (waiting, running or answered but not
# sent): deletes them, so a worker running one neither records its answer nor queues a reply,
# takes them out of the queue, and frees the pair's turn.
_CANCEL = """
local cancelled = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job = string.match(key, ':job:(%x+)$')
  if job and redis.call('HGET', key, 'delivered') ~= '1' and redis.call('EXISTS', key) == 1 then
    redis.call('ZREM', ARGV[1], job)
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], key)
    cancelled = cancelled + 1
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
return cancelled
"""

# Hands over the photos held for one pair, once, and only to that pair; remembers for a while
# that they were taken, so the same person's second tap can be told apart from an expired one.
_TAKE_PHOTOS = """
local owner = redis.call('LINDEX', KEYS[1], 0)
if not owner then
  if redis.call('GET', KEYS[2]) == ARGV[1] then return 'taken' end
  return false
end
if owner ~= ARGV[1] then return false end
local held = redis.call('LRANGE', KEYS[1], 1, -1)
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return held
"""

# Keeps a photo's image embeddings with its case, only while the case exists (a case deleted by
# /forget while its job ran is not brought back), and tracks them for /forget if the pair's key
# set exists (cases opened before embeddings were kept do not list them).
_SAVE_EMBEDDING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local conv = redis.call('HGET', KEYS[1], 'conv')
if conv then
  local tracked = ARGV[4] .. ':conv:' .. conv .. ':keys'
  if redis.call('EXISTS', tracked) == 1 then redis.call('SADD', tracked, KEYS[2]) end
end
return 1
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
    """One question (or a first analysis) waiting for, or holding, its answer."""

    job_id: str
    conv: str
    case: str
    chat_id: int
    reply_to: int | None
    question: str
    kind: str = "followup"
    language: str = "en"
    history: list[Turn] = field(default_factory=list)
    status: str = "new"
    outcome: Outcome | None = None
    answers: dict[str, str] = field(default_factory=dict)
    model_name: str = ""
    untrained: bool = False
    delivered: bool = False
    attempts: int = 0
    parts_sent: int = 0
    step: int = 0
    steps: int = 0
    status_message: int | None = None
    queued_at: float | None = None

    @property
    def answer(self) -> str:
        """All the model wrote for this job, in the order it was asked."""
        return "\n\n".join(text for text in self.answers.values() if text)


@dataclass(frozen=True)
class Case:
    """One skin problem: its photos and the questions about it."""

    case_id: str
    number: int
    photos: int
    primary: int

    @property
    def code(self) -> str:
        """A short id to quote on a referral (e.g. ``K7F-2QX``)."""
        return case_code(self.case_id)


@dataclass(frozen=True)
class Prefs:
    """What one person chose: consent, interface language and mode."""

    consented: bool = False
    language: str | None = None
    health_worker: bool = False


@dataclass(frozen=True)
class HeldPhotos:
    """Photos waiting for the person to say which case they belong to."""

    images: list[bytes]
    caption: str
    again: bool = False  # the same person already took them (a second tap)


def case_code(case_id: str) -> str:
    """Six characters of the case id in an alphabet without 0/O and 1/I, for reading aloud."""
    alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    number = int(case_id[:12], 16)
    chars = []
    for _ in range(6):
        number, digit = divmod(number, len(alphabet))
        chars.append(alphabet[digit])
    return "".join(chars[:3]) + "-" + "".join(chars[3:])


class Store:
    """Typed access to the keys above; every method is one or a few Redis round trips.

    The client is synchronous and thread-safe; the bot calls it through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        retention_seconds: int,
        turn_hold_seconds: int,
        encryption_key: str | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention = retention_seconds
        self.turn_hold = turn_hold_seconds
        self._fernet = Fernet(encryption_key.encode()) if encryption_key else None
        self._pseudonym_key: bytes | None = None
        self._complete = client.register_script(_COMPLETE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._mark_running = client.register_script(_MARK_RUNNING)
        self._forget = client.register_script(_FORGET)
        self._cancel = client.register_script(_CANCEL)
        self._update_job = client.register_script(_UPDATE_JOB)
        self._take_photos = client.register_script(_TAKE_PHOTOS)
        self._save_embedding = client.register_script(_SAVE_EMBEDDING)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str,
        retention_seconds: int,
        turn_hold_seconds: int,
        encryption_key: str | None = None,
    ) -> Store:
        client = redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
        return cls(
            client,
            prefix=prefix,
            retention_seconds=retention_seconds,
            turn_hold_seconds=turn_hold_seconds,
            encryption_key=encryption_key,
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

    # --- photos at rest ------------------------------------------------------------------

    def _seal(self, image_png: bytes) -> bytes:
        return self._fernet.encrypt(image_png) if self._fernet else image_png

    def _open(self, stored: bytes) -> bytes | None:
        if self._fernet is None:
            return stored
        try:
            return self._fernet.decrypt(stored)
        except InvalidToken:
            logger.error("A stored photo cannot be decrypted with the configured key")
            return None

    # --- preferences: consent, language, mode ----------------------------------------------

    def prefs(self, conv: str) -> Prefs:
        """The pair's choices; reading them keeps them alive as long as the retention allows."""
        name = self.key("conv", conv, "prefs")
        with self.client.pipeline() as pipe:
            pipe.hgetall(name)
            pipe.expire(name, self.retention)
            raw: Any = pipe.execute()[0]
        data = {_text(k): _text(v) for k, v in raw.items()}
        return Prefs(
            consented=data.get("consent") == "1",
            language=data.get("language") or None,
            health_worker=data.get("mode") == "health_worker",
        )

    def set_prefs(
        self,
        conv: str,
        *,
        consented: bool | None = None,
        language: str | None = None,
        health_worker: bool | None = None,
    ) -> None:
        """Record one or more of the pair's choices."""
        fields: dict[Any, Any] = {}
        if consented is not None:
            fields["consent"] = int(consented)
        if language is not None:
            fields["language"] = language
        if health_worker is not None:
            fields["mode"] = "health_worker" if health_worker else "patient"
        if not fields:
            return
        name = self.key("conv", conv, "prefs")
        with self.client.pipeline() as pipe:
            pipe.hset(name, mapping=fields)
            pipe.expire(name, self.retention)
            pipe.execute()

    # --- cases: photos and the questions about them ---------------------------------------

    def start_case(self, conv: str, image_png: bytes) -> str:
        """Store a new photo as the pair's open case and return the case id."""
        case = uuid.uuid4().hex
        number: Any = self.client.hincrby(self.key("conv", conv), "cases", 1)
        with self.client.pipeline() as pipe:
            pipe.rpush(self.key("case", case, "images"), self._seal(image_png))
            pipe.expire(self.key("case", case, "images"), self.retention)
            pipe.hset(
                self.key("case", case),
                mapping={"number": int(number), "photos": 1, "primary": 0, "conv": conv},
            )
            pipe.expire(self.key("case", case), self.retention)
            pipe.hset(self.key("conv", conv), mapping={"case": case, "updated": time.time()})
            pipe.expire(self.key("conv", conv), self.retention)
            case_keys = (
                self.key("case", case),
                self.key("case", case, "images"),
                self.key("case", case, "turns"),
                self.key("case", case, "embeddings"),
            )
            self._track(pipe, conv, *case_keys)
            pipe.execute()
        return case

    def add_photo(self, case: str, image_png: bytes, *, primary: bool) -> int:
        """Add a photo to a case; with ``primary`` the model reads this one from now on."""
        images = self.key("case", case, "images")
        with self.client.pipeline() as pipe:
            pipe.rpush(images, self._seal(image_png))
            pipe.expire(images, self.retention)
            pipe.hincrby(self.key("case", case), "photos", 1)
            count = int(pipe.execute()[0])
        if primary:
            self.client.hset(self.key("case", case), "primary", count - 1)
        return count

    def case(self, case: str) -> Case | None:
        raw: Any = self.client.hgetall(self.key("case", case))
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return Case(
            case_id=case,
            number=int(data.get("number", 1)),
            photos=int(data.get("photos", 1)),
            primary=int(data.get("primary", 0)),
        )

    def close_case(self, conv: str) -> bool:
        """Leave the open case, so the next photo starts a new one; False if none was open."""
        return bool(self.client.hdel(self.key("conv", conv), "case"))

    def cancel_jobs(self, conv: str) -> int:
        """Cancel the pair's jobs whose answer the person has not received; returns how many.

        A worker running one of them finds it gone: nothing is recorded and no reply is sent.
        """
        keys = [
            self.key("conv", conv, "keys"),
            self.key("conv", conv, "inflight"),
            self.key("conv", conv, "waiting"),
        ]
        return int(self._cancel(keys=keys, args=[self.key("queue")]))

    def forget(self, conv: str) -> int:
        """Delete every photo, question, answer and job of one pair; returns the keys deleted."""
        own = [
            self.key("conv", conv, "keys"),
            self.key("conv", conv),
            self.key("conv", conv, "prefs"),
            self.key("conv", conv, "inflight"),
            self.key("conv", conv, "waiting"),
        ]
        return int(self._forget(keys=own, args=[self.key("queue")]))

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
            pipe.expire(self.key("case", case, "images"), self.retention)
            pipe.expire(self.key("case", case), self.retention)
            pipe.expire(self.key("case", case, "turns"), self.retention)
            pipe.expire(self.key("case", case, "embeddings"), self.retention)
            pipe.expire(self.key("conv", conv), self.retention)
            alive = pipe.execute()[0]
        return case if alive else None

    def load_image(self, case: str) -> bytes | None:
        """The photo the model reads for this case (decrypted), or None once it expired."""
        primary: Any = self.client.hget(self.key("case", case), "primary")
        data: Any = self.client.lindex(self.key("case", case, "images"), int(primary or 0))
        return self._open(bytes(data)) if data is not None else None

    def load_embedding(self, case: str, key: str) -> bytes | None:
        """Image embeddings kept with the case under ``key`` (decrypted), or None."""
        data: Any = self.client.hget(self.key("case", case, "embeddings"), key)
        return self._open(bytes(data)) if data is not None else None

    def save_embedding(self, case: str, key: str, data: bytes) -> bool:
        """Keep image embeddings with the case, sealed like its photos, for as long as it lives.

        Returns:
            False when the case no longer exists (nothing is stored then).
        """
        keys = [self.key("case", case), self.key("case", case, "embeddings")]
        args: list[Any] = [key, self._seal(data), self.retention, self.prefix]
        return bool(self._save_embedding(keys=keys, args=args))

    def turns(self, case: str) -> list[Turn]:
        raw: Any = self.client.lrange(self.key("case", case, "turns"), 0, -1)
        return [Turn(question=t["q"], answer=t["a"]) for t in map(json.loads, raw)]

    # --- photos waiting for the person to choose their case ---------------------------------

    def hold_photos(self, conv: str, images: list[bytes], caption: str) -> str:
        """Keep photos until the person says whether they show the open case's problem."""
        token = uuid.uuid4().hex[:16]
        name = self.key("photo", token)
        with self.client.pipeline() as pipe:
            sealed = [self._seal(image) for image in images]
            pipe.rpush(name, conv.encode(), caption.encode(), *sealed)
            pipe.expire(name, self.retention)
            self._track(pipe, conv, name, self.key("photo", token, "taken"))
            pipe.execute()
        return token

    def take_photos(self, token: str, conv: str) -> HeldPhotos | None:
        """The photos and caption held for ``conv``, once; None when they are gone or were
        never theirs (another person's tap on the same button finds nothing)."""
        name = self.key("photo", token)
        raw: Any = self._take_photos(
            keys=[name, self.key("photo", token, "taken")], args=[conv, self.turn_hold]
        )
        if raw == b"taken":
            return HeldPhotos([], "", again=True)
        if not raw:
            return None
        images = [self._open(bytes(item)) for item in raw[1:]]
        if any(image is None for image in images):
            return None
        return HeldPhotos([i for i in images if i is not None], bytes(raw[0]).decode())

    # --- jobs ----------------------------------------------------------------------------

    def new_job(
        self,
        *,
        conv: str,
        case: str,
        chat_id: int,
        reply_to: int | None,
        question: str,
        kind: str = "followup",
        language: str = "en",
    ) -> str:
        job_id = uuid.uuid4().hex
        fields: dict[Any, Any] = {
            "conv": conv,
            "case": case,
            "chat_id": chat_id,
            "reply_to": "" if reply_to is None else reply_to,
            "question": question,
            "kind": kind,
            "language": language,
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

    def jobs_in_flight(self, conv: str) -> int:
        """The pair's jobs queued or being answered now."""
        with self.client.pipeline() as pipe:
            pipe.exists(self.key("conv", conv, "inflight"))
            pipe.llen(self.key("conv", conv, "waiting"))
            running, waiting = pipe.execute()
        return int(running) + int(waiting)

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
        self._update_job(keys=job, args=["set", "queued", time.time()])
        self._update_job(keys=job, args=["set", "status", "queued"])

    def enqueue(self, job_id: str) -> None:
        """Count the job in the line for the model (its place is shown to the person)."""
        self.client.zadd(self.key("queue"), {job_id: time.time()}, nx=True)

    def place_in_line(self, job_id: str, *, max_age: float) -> int | None:
        """1 when the job is next or running; None when it is not in line (any more).

        Entries older than ``max_age`` seconds belong to jobs whose end was never recorded.
        """
        name = self.key("queue")
        with self.client.pipeline() as pipe:
            pipe.zremrangebyscore(name, 0, time.time() - max_age)
            pipe.zrank(name, job_id)
            rank = pipe.execute()[1]
        return None if rank is None else int(rank) + 1

    def running_jobs(self, *, look_at: int = 32) -> int:
        """How many of the first jobs in line are being answered now (the busy workers)."""
        ids: Any = self.client.zrange(self.key("queue"), 0, look_at - 1)
        if not ids:
            return 0
        with self.client.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(self.key("job", _text(job_id)), "status")
            statuses = pipe.execute()
        return sum(1 for status in statuses if status == b"running")

    def kinds_in_line(self, count: int) -> list[str]:
        """The kinds of the first ``count`` jobs in line."""
        ids: Any = self.client.zrange(self.key("queue"), 0, count - 1)
        with self.client.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(self.key("job", _text(job_id)), "kind")
            kinds = pipe.execute()
        return [_text(kind) if kind else "followup" for kind in kinds]

    def memory_use(self) -> tuple[int, int]:
        """Bytes Redis uses now, and its ``maxmemory`` (0 when it has no limit).

        A server that does not say (the in-memory store of offline clinic mode, or a managed
        Redis that forbids INFO) reads as (0, 0): no budget to enforce.
        """
        try:
            info: Any = self.client.info("memory")
        except redis.ResponseError:
            return 0, 0
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    def oldest_waiting(self, *, look_at: int = 32) -> float | None:
        """When the longest-waiting job not yet running was queued; None when none waits."""
        entries: Any = self.client.zrange(self.key("queue"), 0, look_at - 1, withscores=True)
        if not entries:
            return None
        with self.client.pipeline() as pipe:
            for job_id, _score in entries:
                pipe.hget(self.key("job", _text(job_id)), "status")
            statuses = pipe.execute()
        for (_job_id, score), status in zip(entries, statuses, strict=True):
            if status == b"queued":
                return float(score)
        return None

    def recent_seconds(self, kind: str) -> list[float]:
        """Service times of the latest jobs of one kind, newest first."""
        raw: Any = self.client.lrange(self.key("stats", kind), 0, -1)
        return [float(value) for value in raw]

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
            kind=data.get("kind", "followup"),
            language=data.get("language", "en"),
            history=[Turn(question=t["q"], answer=t["a"]) for t in json.loads(data["history"])],
            status=data["status"],
            outcome=Outcome(data["outcome"]) if data.get("outcome") else None,
            answers=json.loads(data["answers"]) if data.get("answers") else {},
            model_name=data.get("model", ""),
            untrained=data.get("untrained") == "1",
            delivered=data.get("delivered") == "1",
            attempts=int(data.get("attempts", 0)),
            parts_sent=int(data.get("parts_sent", 0)),
            step=int(data.get("step", 0)),
            steps=int(data.get("steps", 0)),
            status_message=int(data["status_message"]) if data.get("status_message") else None,
            queued_at=float(data["queued"]) if data.get("queued") else None,
        )

    def mark_running(self, job_id: str) -> int:
        """Count one more delivery of the job to a worker; 0 if the job no longer exists."""
        return int(self._mark_running(keys=[self.key("job", job_id)]))

    def set_step(self, job_id: str, step: int, steps: int) -> None:
        """Record which model call of the job is running (shown in the status message)."""
        job = [self.key("job", job_id)]
        self._update_job(keys=job, args=["set", "steps", steps])
        self._update_job(keys=job, args=["set", "step", step])

    def set_status_message(self, job_id: str, message_id: int) -> None:
        """Remember the message that shows the job's place in line, to update or remove it."""
        self._update_job(
            keys=[self.key("job", job_id)], args=["set", "status_message", message_id]
        )

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
        answers: dict[str, str] | None = None,
        *,
        turns: list[Turn] | None = None,
        model_name: str = "",
        untrained: bool = False,
        seconds: float = 0.0,
    ) -> bool:
        """Record the answers and queue the reply; False if the job was already complete.

        ``turns`` join the case's history when the job was answered; ``seconds`` (the time the
        model took) joins the recent service times of the job's kind.
        """
        raw: Any = self.client.hmget(self.key("job", job_id), ["case", "kind"])
        case, kind = (_text(v) if v is not None else None for v in raw)
        turns_key = self.key("case", case, "turns") if case else self.key("none")
        done = self._complete(
            keys=[
                self.key("job", job_id),
                turns_key,
                self.key("outbox"),
                self.key("queue"),
                self.key("stats", kind or "followup"),
            ],
            args=[
                outcome.value,
                json.dumps(answers or {}),
                model_name,
                int(untrained),
                time.time(),
                self.retention,
                job_id,
                json.dumps([{"q": t.question, "a": t.answer} for t in turns or []]),
                round(seconds, 3),
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

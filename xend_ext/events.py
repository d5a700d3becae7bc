"""Events: XAPI's ``event.from`` and xend's ``event.register``/``next``, from one change log.

A change becomes visible only once its journal record is durable, so a client never sees an
event for something a crash could take back. Each change gets a generation number; tokens are
generations, formatted like XAPI's (``"%020d,%020d"``) so clients that compare them as strings keep
working. Generations start from the clock at boot, so tokens still increase across restarts.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .encode import RecordCache, encoded_record
from .wire import Encoded, XenAPIError, encode_value

if TYPE_CHECKING:
    from .model import Database, Obj

# Changes kept for event.from (older tokens get a scan of every object). Each entry holds its
# object, destroyed ones included: at 200,000 the log alone took RSS from 38 to 71 MB over a
# 5-minute soak, and the collector's passes over it slowed every call (issue 16, item 10).
LOG_LIMIT = 20_000
QUEUE_LIMIT = 10_000
REPLY_BUDGET = 16 << 20  # bytes of event.from replies kept for the watchers of one generation
_NOTHING = Encoded(b"")  # a shared answer: no event matches


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def format_token(gen: int) -> str:
    return f"{gen:020d},{0:020d}"


def parse_token(token: str) -> int:
    if token == "":
        return 0
    head = token.split(",", 1)[0]
    if not head.isdigit():
        raise XenAPIError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)
    return int(head)


class Subscription:
    """A parsed list of ``"*"``, ``"<class>"`` and ``"<class>/<ref>"`` entries."""

    def __init__(self, entries: list[str], known: dict[str, str]) -> None:
        self.all = False
        self.classes: set[str] = set()
        self.objects: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str):
                raise XenAPIError("EVENT_SUBSCRIPTION_PARSE_FAILURE", str(entry))
            if entry == "*":
                self.all = True
                continue
            cname, _, ref = entry.partition("/")
            cname = known.get(cname.lower())
            if cname is None:
                raise XenAPIError("EVENT_SUBSCRIPTION_PARSE_FAILURE", entry)
            if ref:
                self.objects.add(ref)
            else:
                self.classes.add(cname)
        self._key: tuple | None = None

    @property
    def key(self) -> tuple:
        """Equal for subscriptions that match the same objects (their replies are shared); made
        once, when first asked (event.from asks again at every wake-up)."""
        if self._key is None:
            self._key = (self.all, frozenset(self.classes), frozenset(self.objects))
        return self._key

    def forget_key(self) -> None:
        """The entries are about to change (event.register / unregister)."""
        self._key = None

    def matches(self, cname: str, ref: str) -> bool:
        return self.all or cname in self.classes or ref in self.objects


class Registration:
    """One session's xend-style queue (event.register / event.next)."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.queue: deque[Encoded] = deque()
        self.lost = False
        self.wakeup = asyncio.Event()


class EventHub:
    def __init__(self, queue_limit: int = QUEUE_LIMIT) -> None:
        self.queue_limit = queue_limit
        self.db: Database | None = None
        self.generation = time.time_ns() // 1000  # microseconds: tokens keep increasing across restarts
        self.published = self.generation
        self.durable_seq = 0
        self._pending: deque[tuple[int, int, Obj, str]] = deque()  # (seq, gen, obj, op) waiting for the journal
        self._log_gens: list[int] = []
        self._log: list[tuple[str, str, str, Obj]] = []  # (class, ref, op, obj)
        self._log_start = 0
        self._waiters: set[asyncio.Future[None]] = set()  # event.from calls waiting for a change
        self.registrations: dict[str, Registration] = {}
        self.known_classes: dict[str, str] = {}
        self.on_publish: list[Callable[[], None]] = []
        self.records = RecordCache()  # each object's record encoded once per version
        # event.from replies of the newest generation, shared by watchers asking the same
        self._replies: dict[tuple, Encoded] = {}
        self._replies_size = 0
        self.replies_built = 0  # for the tests that count work

    def bind(self, db: Database) -> None:
        self.db = db
        self._log_start = self.generation  # older tokens are answered by a scan of every object
        self.known_classes = {c.name.lower(): c.name for c in db.registry.classes.values() if c.events}

    # -- producing ------------------------------------------------------------------------
    def changed(self, obj: Obj, op: str, seq: int) -> None:
        self.records.drop(obj.ref)
        self.generation += 1
        if op == "add":
            obj.ctime = self.generation
        obj.mtime = self.generation
        obj.mts = time.time()  # when it changed, not when a client reads the event
        if op == "mod" and self._pending:
            last_seq, _gen, last_obj, last_op = self._pending[-1]
            if last_obj is obj and last_op in ("add", "mod"):
                # several fields of one object changed in a row (a VM start sets power_state, domid,
                # resident_on): one event, as XAPI coalesces, not three that look the same
                self._pending[-1] = (max(seq, last_seq), self.generation, obj, last_op)
                return
        self._pending.append((seq, self.generation, obj, op))
        if seq <= self.durable_seq:
            self._publish_ready()

    def durable(self, seq: int) -> None:
        """The journal is on disk up to ``seq``: what waited for it becomes visible."""
        if seq > self.durable_seq:
            self.durable_seq = seq
        self._publish_ready()

    def rollback(self, durable_seq: int, undone: set[Obj]) -> None:
        """Changes after ``durable_seq`` were taken back (a refused journal write): their events are
        dropped; the other changes waiting with them (kept or in memory only) are let out."""
        kept: deque[tuple[int, int, Obj, str]] = deque()
        for seq, gen, obj, op in self._pending:
            if seq > durable_seq:
                self.records.drop(obj.ref)  # read meanwhile, its encoding may hold what was undone
                if obj in undone:
                    continue
                seq = durable_seq
            kept.append((seq, gen, obj, op))
        self._pending = kept
        self._publish_ready()

    def _publish_ready(self) -> None:
        published = False
        while self._pending and self._pending[0][0] <= self.durable_seq:
            seq, gen, obj, op = self._pending.popleft()
            self._log_gens.append(gen)
            self._log.append((obj.cls.name, obj.ref, op, obj))
            self.published = gen
            self._queue_for_registrations(gen, obj, op)
            published = True
        if published:
            self._replies.clear()
            self._replies_size = 0
            if len(self._log) > LOG_LIMIT:
                cut = len(self._log) - LOG_LIMIT // 2
                self._log_start = self._log_gens[cut]
                del self._log[:cut]
                del self._log_gens[:cut]
            waiters, self._waiters = self._waiters, set()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _queue_for_registrations(self, gen: int, obj: Obj, op: str) -> None:
        if not self.registrations:
            return
        record = None
        for reg in self.registrations.values():
            if not reg.sub.matches(obj.cls.name, obj.ref) or reg.lost:
                continue
            if record is None:
                # encoded once, shared by every registration's queue
                record = encode_value(self._event_record(gen, obj.cls.name, obj.ref, op, obj))
            if len(reg.queue) >= self.queue_limit:
                reg.lost = True
                reg.queue.clear()
            else:
                reg.queue.append(record)
            reg.wakeup.set()

    def _event_record(self, gen: int, cname: str, ref: str, op: str, obj: Obj | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": str(gen),
            "timestamp": f"{(obj.mts if obj is not None and obj.mts else time.time()):.6f}",
            "class": cname.lower(),
            "operation": op,
            "ref": ref,
        }
        current = self.db.find(ref) if op != "del" and obj is not None and self.db is not None else None
        # an object made when asked (XenAPIClass.unheld) is a new one each time, the same to clients
        if current is not None and (current is obj or obj.cls.unheld is not None):
            # encoded text: queued events do not change when the object changes later
            record["snapshot"] = encoded_record(self.db, current)
        return record

    # -- event.from -----------------------------------------------------------------------
    def collect(self, sub: Subscription, since: int) -> tuple[list[dict], int]:
        """Coalesced changes after ``since``: one event per object, XAPI-style add/mod/del."""
        upto = self.published
        if since >= upto:
            return [], upto
        if since < self._log_start:
            return self._scan(sub, since, upto), upto
        start = bisect.bisect_right(self._log_gens, since)
        latest: dict[str, tuple[int, str, str, str, Obj]] = {}
        for i in range(start, len(self._log)):
            cname, ref, op, obj = self._log[i]
            if not sub.matches(cname, ref):
                continue
            first = latest.get(ref)
            gen = self._log_gens[i]
            if first is None:
                latest[ref] = (gen, cname, ref, op, obj)
            else:
                created_here = first[3] == "add"
                if op == "del":
                    new_op = "gone" if created_here else "del"
                else:
                    new_op = "add" if created_here else "mod"
                latest[ref] = (gen, cname, ref, new_op, obj)
        events = [self._event_record(g, c, r, op, o) for g, c, r, op, o in latest.values() if op != "gone"]
        events.sort(key=lambda e: int(e["id"]))
        return events, upto

    def _scan(self, sub: Subscription, since: int, upto: int) -> list[dict]:
        assert self.db is not None
        events = []
        for cname in self.known_classes.values():
            for obj in self.db.values(cname):
                if since < obj.mtime <= upto and sub.matches(cname, obj.ref):
                    op = "add" if obj.ctime > since else "mod"
                    events.append(self._event_record(obj.mtime, cname, obj.ref, op, obj))
        events.sort(key=lambda e: int(e["id"]))
        return events

    def reply(self, sub: Subscription, since: int) -> Encoded | None:
        """event.from's value for changes after ``since``, or None if none matches.

        Built once per (subscription, token, generation): the watchers a change wakes together
        mostly asked the same, and get the same text."""
        key = (sub.key, since, self.published)
        text = self._replies.get(key)
        if text is None:
            events, upto = self.collect(sub, since)
            text = self._value(events, upto) if events else _NOTHING
            cost = len(text) + 256  # an empty answer costs its key: distinct tokens cannot grow this unbounded
            if self._replies_size + cost <= REPLY_BUDGET:
                self._replies[key] = text
                self._replies_size += cost
        return text or None

    def _value(self, events: list[dict], upto: int) -> Encoded:
        self.replies_built += 1
        return encode_value({"events": events, "valid_ref_counts": self.valid_ref_counts(),
                             "token": format_token(upto)})

    async def wait_from(self, sub: Subscription, since: int, timeout: float) -> Encoded:
        """event.from: the changes after ``since``, waiting up to ``timeout`` s for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = self.reply(sub, since)
            if text is not None:
                return text
            since = max(since, self.published)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._value([], self.published)
            fut = loop.create_future()
            self._waiters.add(fut)
            timer = loop.call_later(remaining, _wake, fut)  # cheaper than wait_for: one wake-up per change
            try:
                await fut
            finally:
                timer.cancel()
                self._waiters.discard(fut)

    @property
    def waiting(self) -> int:
        """event.from calls waiting for a change now."""
        return len(self._waiters)

    def valid_ref_counts(self) -> dict[str, int]:
        assert self.db is not None
        return {cname.lower(): self.db.count(cname) for cname in self.known_classes.values()}

    # -- event.register / next --------------------------------------------------------------
    def register(self, session: str, entries: list[str]) -> None:
        reg = self.registrations.get(session)
        if reg is None:
            self.registrations[session] = Registration(Subscription(entries or ["*"], self.known_classes))
            return
        extra = Subscription(entries or ["*"], self.known_classes)
        reg.sub.forget_key()
        reg.sub.all |= extra.all
        reg.sub.classes |= extra.classes
        reg.sub.objects |= extra.objects

    def unregister(self, session: str, entries: list[str]) -> None:
        reg = self.registrations.get(session)
        if reg is None:
            return
        if not entries:
            del self.registrations[session]
            return
        drop = Subscription(entries, self.known_classes)
        if drop.all:
            del self.registrations[session]
            return
        reg.sub.forget_key()
        reg.sub.classes -= drop.classes
        reg.sub.objects -= drop.objects
        if not (reg.sub.all or reg.sub.classes or reg.sub.objects):
            del self.registrations[session]

    async def next(self, session: str, alive: Callable[[], bool]) -> list[Encoded]:
        while True:
            reg = self.registrations.get(session)
            if reg is None:
                raise XenAPIError("SESSION_NOT_REGISTERED", session)
            if reg.lost:
                reg.lost = False
                raise XenAPIError("EVENTS_LOST")
            if reg.queue:
                events = list(reg.queue)
                reg.queue.clear()
                reg.wakeup.clear()
                return events
            reg.wakeup.clear()
            try:
                await asyncio.wait_for(reg.wakeup.wait(), 5.0)
            except TimeoutError:
                pass
            if not alive():
                raise XenAPIError("SESSION_INVALID", session)

    def forget_session(self, session: str) -> None:
        reg = self.registrations.pop(session, None)
        if reg is not None:
            reg.wakeup.set()

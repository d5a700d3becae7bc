"""The journal of a pool: the model's ops made durable in etcd, the other hosts' changes watched.

Same contract as :class:`xend_ext.store.Store` for the model and the dispatcher: ``append(op)``
is cheap and returns a seq, ``durable(seq)`` returns once etcd has committed it, and a batch that
cannot be committed is refused (every op after the last durable one is undone through the
rollback hook, the calls answer ``STORE_WRITE_FAILED``).

A batch is the ops appended while the previous one was on its way (group commit, as the
embedded store does with fsync). Its transaction compares every object it writes by the mod
revision this server's model holds it at, and puts the objects' new encoded records: a change
another host committed meanwhile fails the compare, so no update is lost. The transaction also
puts this server's writer key with the batch's id; when the answer is lost (the member died
mid-call) the key says whether the batch committed, and if not it is sent again (its compares
keep it from applying twice).

The watch of the prefix brings every change of the pool in revision order. Ours are recognised
by revision and skipped; another host's change of an object this server has a batch pending for
is held until that batch is answered (its compare fails, the model's change is undone, then the
held value is applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

import aetcd

from ..model import Database, Loader
from ..store.errors import StateDirLocked, StoreError, WriteRefused
from ..store.journal import encode_op
from ..store.schema import Description, normalize

log = logging.getLogger("xend_ext.cluster")

#: What an etcd call raises when no member answers for now: the call is tried again.
UNREACHABLE = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.InternalError)

RETRY = 0.2  # seconds between two tries when etcd cannot be reached
CALL_TIMEOUT = 5  # seconds an etcd call may take before its outcome is looked up again
MAX_KEYS = 100  # objects per transaction (etcd refuses more than --max-txn-ops, 128 by default)
DEFAULT_PREFIX = "/xend-ext/"



class Conflict(WriteRefused):
    """A batch's compare failed: an object it writes was changed by another host meanwhile."""

    def __init__(self, prefix: str) -> None:
        self.path = prefix
        self.cause = "another host of the pool changed the same object first (etcd compare by mod revision)"
        StoreError.__init__(self, self.cause)

    advice = "the change was not made; the object now holds the other host's change: read it and retry"


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``"10.0.0.1:2379,10.0.0.2:2379"`` (an http:// in front is allowed); ValueError if malformed."""
    found = []
    for part in text.split(","):
        part = part.strip().removeprefix("http://").rstrip("/")
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--cluster: {part!r} is not HOST:PORT (give etcd client endpoints, comma-separated)")
        found.append((host, int(port)))
    return found


def make_client(endpoints: list[tuple[str, int]]):
    """An aetcd client over every member: gRPC's own address list (``ipv4:a:p,b:p``) with its
    pick-first policy moves to the next member when the one in use is gone."""
    if len(endpoints) == 1:
        host, port = endpoints[0]
    else:
        *first, (last_host, port) = endpoints
        host = "ipv4:" + ",".join(f"{h}:{p}" for h, p in first) + "," + last_host
    # the start reads the whole pool in one range: no 4 MiB cap on a reply (gRPC's default)
    return aetcd.Client(host=host, port=port, timeout=CALL_TIMEOUT, options={"grpc.max_receive_message_length": -1})


class ClusterStore:
    def __init__(self, endpoints: str, prefix: str, description: Description, state_dir: Path) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix.encode()
        self._objects = self.prefix + b"o/"
        self._classes = normalize(description)
        self.state_dir = Path(state_dir)
        self.client = None
        self.refused: WriteRefused | None = None
        self.broken = False
        self._rollback: Callable[[int], None] | None = None
        self._db: Database | None = None
        self._loader: Loader | None = None
        self._state = "new"
        self._lock_fd: int | None = None
        self._rows: list[tuple[str, str, dict]] = []  # the pool as read at connect, until open_into
        self._last_seq = self._durable_seq = 0
        self._queue: list[tuple[str, str, tuple]] = []  # (class, ref, op) appended, not yet sent
        self._queued: set[bytes] = set()  # their keys
        self._inflight: set[bytes] = set()  # the keys of the batch on its way
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        # key -> the mod revision of the object as the model holds it (its value is the model's);
        # held: another host's newer value of an object we have a batch pending for
        self.known: dict[bytes, int] = {}
        self.held: dict[bytes, tuple[int, dict | None]] = {}
        self.seen = 0  # the newest revision the watch has brought
        self.committed = 0  # the revision of this server's last transaction
        self._reaching: list[tuple[int, asyncio.Future[None]]] = []  # calls waiting for the watch (reached)
        self._writer = self.prefix + b"w/" + _writer_id(self.state_dir).encode()
        self.secret = ""
        self._batch_ids = (f"{uuid.uuid4().hex[:12]}-{n}".encode() for n in itertools.count())
        self.transactions = 0
        self.conflicts = 0
        self.retries = 0

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Lock the state directory, reach etcd and read the pool's objects (StoreError if not)."""
        self._lock()
        self.client = make_client(self.endpoints)
        try:
            found = await self.client.get_prefix(self._objects)
        except Exception as exc:  # noqa: BLE001 - every failure to reach etcd is one line
            self._unlock()
            where = ",".join(f"{h}:{p}" for h, p in self.endpoints)
            raise StoreError(f"cannot reach etcd at {where}: {why(exc)}") from None
        self.seen = found.header.revision
        for kv in found:
            cname, ref = self._split(kv.key)
            self.known[kv.key] = kv.mod_revision
            if cname in self._classes:
                self._rows.append((cname, ref, json.loads(kv.value)))
        self.secret = await self._pool_secret()

    async def _pool_secret(self) -> str:
        """The pool's secret, with which its servers open sessions to each other (xend_ext.forward):
        made once, by the first server, in a create-if-absent transaction; read by every other."""
        key, t = self.prefix + b"secret", self.client.transactions
        made = secrets.token_hex(32).encode()
        await self.client.transaction(compare=[t.version(key) == 0], success=[t.put(key, made)], failure=[])
        found = await self.client.get(key)
        return found.value.decode()

    async def refresh(self, cname: str, ref: str) -> None:
        """Bring one object up to etcd's value now (a change another host made for our caller, which
        the watch may not have brought yet); applied as the watch would."""
        key = self.key(cname, ref)
        found = await self.client.get(key)
        if found is not None:
            self._changed(key, found.mod_revision, json.loads(found.value))

    def open_into(self, sink) -> int:
        """The pool's objects, read by :meth:`connect`, into the model's loader; seq 0."""
        rows, self._rows = self._rows, []
        for cname, ref, value in rows:
            sink.row(cname, ref, value)
        self._state = "open"
        return 0

    def follow(self, db: Database) -> None:
        """From now on, other hosts' changes go into ``db`` as the watch brings them; a batch
        writes the objects as ``db`` holds them."""
        self._db, self._loader = db, Loader(db)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._state != "open":
            self._unlock()
            return
        try:
            if self._last_seq > self._durable_seq:
                await self.durable(self._last_seq)
        except StoreError as exc:
            log.error("closing: %s", exc)
        finally:
            self._state = "closed"
            if self._watch_task is not None:
                self._watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch_task
            if self.client is not None:
                await self.client.close()
            self._unlock()

    def set_rollback(self, rollback: Callable[[int], None] | None) -> None:
        self._rollback = rollback

    def set_capture(self, capture) -> None:
        """The pool's state is etcd's: no snapshot to write."""

    def stats(self) -> dict[str, int]:
        return {"last_seq": self._last_seq, "durable_seq": self._durable_seq, "fsyncs": self.transactions,
                "journal_records": self._last_seq, "transactions": self.transactions,
                "conflicts": self.conflicts, "retries": self.retries, "revision": self.seen}

    # ------------------------------------------------------------------ the model's ops

    def append(self, op: tuple) -> int:
        if self._state != "open":
            raise StoreError(f"cluster store is {self._state}; cannot record {op[:3]!r}")
        encode_op(op, self._classes)  # a malformed op is a bug: refused here, never sent
        self._queue.append((op[1], op[2], op))
        self._queued.add(self.key(op[1], op[2]))
        self._last_seq += 1
        return self._last_seq

    async def durable(self, seq: int) -> None:
        if seq <= self._durable_seq:
            return
        if self._state != "open":
            raise StoreError("cluster store is closed")
        if seq > self._last_seq:
            if self.refused is not None:
                raise self.refused
            raise ValueError(f"seq {seq} was never appended (last is {self._last_seq})")
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        await fut

    async def _flush_loop(self) -> None:
        try:
            while self._queue and self._state == "open":
                batch, upto = self._queue, self._last_seq
                self._queue, self._inflight, self._queued = [], self._queued, set()
                values = self._values(batch)
                keys = list(values)
                try:
                    for start in range(0, len(keys), MAX_KEYS):
                        chunk = {k: values[k] for k in keys[start:start + MAX_KEYS]}
                        revision = await self._commit(chunk)
                        if revision is None:
                            raise Conflict(self.prefix.decode())
                        for key in chunk:
                            self.known[key] = revision
                        self.committed = max(self.committed, revision)
                except WriteRefused as exc:
                    self._inflight = set()
                    self._refuse(exc)
                    continue
                self._inflight = set()
                self._durable_seq = upto
                self._wake(upto)
                self._apply_held()
        finally:
            self._flush_task = None

    def _values(self, batch: list[tuple[str, str, tuple]]) -> dict[bytes, dict | None]:
        """The stored fields of each object the batch touches, as the model holds them now: after
        the batch's ops, which are all it was given (None: destroyed)."""
        values: dict[bytes, dict | None] = {}
        for cname, ref, _op in batch:
            key = self.key(cname, ref)
            if key not in values:
                obj = self._db.by_ref.get(ref)
                values[key] = None if obj is None else self.record(obj)
        return values

    async def _commit(self, values: dict[bytes, dict | None]) -> int | None:
        """One transaction; its revision, or None if a compare failed. Waits out etcd's absence."""
        t = self.client.transactions
        compare = [t.mod(key) == self.known.get(key, 0) for key in values]
        batch_id = next(self._batch_ids)
        success = [t.put(key, self.encode(v)) if v is not None else t.delete(key) for key, v in values.items()]
        success.append(t.put(self._writer, batch_id))
        sent = False
        while True:
            try:
                if sent:  # the previous try's answer was lost: did it commit?
                    found = await self.client.get(self._writer)
                    if found is not None and found.value == batch_id:
                        return found.mod_revision
                sent = True
                ok, responses = await self.client.transaction(compare=compare, success=success, failure=[])
                self.transactions += 1
                if not ok:
                    self.conflicts += 1
                    return None
                return responses[-1].response_put.header.revision
            except UNREACHABLE as exc:  # a member gone, an election: gRPC tries the others
                if self._state != "open":
                    raise WriteRefused(self.prefix.decode(), "the server is stopping") from None
                self.retries += 1
                log.warning("etcd: %s; trying again", why(exc))
                await asyncio.sleep(RETRY)
            except Exception as exc:  # noqa: BLE001 - etcd refused the transaction itself (its size...)
                raise WriteRefused(self.prefix.decode(), f"etcd refused the transaction: {why(exc)}") from None

    def _refuse(self, exc: WriteRefused) -> None:
        """The batch is not in etcd: undo it and every op after it, then apply what was held."""
        log.log(logging.INFO if isinstance(exc, Conflict) else logging.WARNING,
                "%s; the changes not yet committed are undone", exc)
        self.refused = exc
        self._queue, self._queued = [], set()
        self._last_seq = self._durable_seq
        if self._rollback is not None:
            self._rollback(self._durable_seq)
        waiters, self._waiters = self._waiters, []
        for _seq, fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._apply_held()

    def _wake(self, upto: int) -> None:
        still = []
        for seq, fut in self._waiters:
            if seq > upto:
                still.append((seq, fut))
            elif not fut.done():
                fut.set_result(None)
        self._waiters = still

    # ------------------------------------------------------------------ the watch

    async def _watch(self) -> None:
        """Follow the prefix from the revision read at start; after any break (a member gone,
        history compacted past where it stopped) read the prefix again, apply what differs and
        watch on from there: a watch never has to start from a revision etcd may have dropped."""
        behind = False
        while self._state == "open":
            try:
                if behind:
                    await self._resync()
                watch = await self.client.watch_prefix(self._objects, start_revision=self.seen + 1)
                behind = True
                async for event in watch:
                    kv = event.kv
                    self._changed(kv.key, kv.mod_revision, json.loads(kv.value) if event.kind == "PUT" else None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a member gone: read and watch through another
                log.warning("etcd watch: %s; reading the pool again and watching from there", why(exc))
                behind = True
                await asyncio.sleep(RETRY)

    def revision(self) -> int:
        """The pool's state as this server knows it: the newest revision it wrote or watched."""
        return max(self.seen, self.committed)

    async def reached(self, revision: int, timeout: float = CALL_TIMEOUT) -> None:
        """Once the watch has brought everything up to ``revision`` (another host's state when it
        forwarded a call here), or after ``timeout`` s: the call then answers from what is here."""
        if revision <= self.seen or self._state != "open":
            return
        fut = asyncio.get_running_loop().create_future()
        self._reaching.append((revision, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:  # not kept waiting (a revision from a caller's path may never come)
            self._reaching = [(r, f) for r, f in self._reaching if f is not fut]

    def _saw(self, revision: int) -> None:
        self.seen = max(self.seen, revision)
        if self._reaching:
            still = []
            for wanted, fut in self._reaching:
                if wanted > self.seen:
                    still.append((wanted, fut))
                elif not fut.done():
                    fut.set_result(None)
            self._reaching = still

    def _changed(self, key: bytes, revision: int, value: dict | None) -> None:
        self._saw(revision)
        if revision <= self.known.get(key, 0):
            return  # ours, or older than what the model holds
        if key in self._queued or key in self._inflight:
            if revision > self.held.get(key, (0, None))[0]:
                self.held[key] = (revision, value)
            return
        self._apply(key, revision, value)

    def _apply(self, key: bytes, revision: int, value: dict | None) -> None:
        self.known[key] = revision
        if value is None:
            self.known.pop(key)
        cname, ref = self._split(key)
        if cname in self._classes and self._db is not None:
            try:
                self._db.apply_remote(self._loader, cname, ref, value)
            except Exception:  # noqa: BLE001 - one bad record must not stop the watch
                log.exception("could not apply %s %s from the pool", cname, ref)

    def _apply_held(self) -> None:
        for key, (revision, value) in list(self.held.items()):
            if key in self._queued or key in self._inflight:
                continue
            del self.held[key]
            if revision > self.known.get(key, 0):
                self._apply(key, revision, value)

    async def _resync(self) -> None:
        """The watch fell behind etcd's compaction: read the whole prefix and apply what differs."""
        found = await self.client.get_prefix(self._objects)
        present = set()
        for kv in found:
            present.add(kv.key)
            self._changed(kv.key, kv.mod_revision, json.loads(kv.value))
        for key in [k for k in self.known if k.startswith(self._objects) and k not in present]:
            self._changed(key, found.header.revision, None)
        self._saw(found.header.revision)

    # ------------------------------------------------------------------ helpers

    def key(self, cname: str, ref: str) -> bytes:
        """The etcd key of an object of the pool."""
        return self._objects + f"{cname}/{ref}".encode()

    @staticmethod
    def record(obj, changes: dict | None = None) -> dict:
        """The object's stored fields as its key holds them (``changes`` instead of its values)."""
        changes = changes or {}
        return {f.name: f.type.encode(changes.get(f.name, obj.values[f.name])) for f in obj.cls.stored_fields()}

    @staticmethod
    def encode(record: dict) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode()

    def _split(self, key: bytes) -> tuple[str, str]:
        cname, _, ref = key[len(self._objects):].decode().partition("/")
        return cname, ref

    def _lock(self) -> None:
        """One server per state directory (its simulated host, images and audit log live there)."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateDirLocked(self.state_dir, int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _writer_id(state_dir: Path) -> str:
    """This server's name among the pool's writers, kept in its state directory."""
    path = state_dir / "cluster-writer"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        path.write_text(name + "\n", encoding="ascii")
        return name


def why(exc: BaseException) -> str:
    """An etcd client error in one line (gRPC's texts span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__

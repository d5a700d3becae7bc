"""Durable state: an fsync'd journal of mutations plus an XML snapshot, with group commit.

The in-memory object model is the truth; the store only makes it durable.  Every
mutation the model commits is appended as one journal op (:meth:`Store.append`) and
the reply waits for :meth:`Store.durable`.  Ops appended while a write is on its way
to disk are written together by the next one, with one fsync for all of them (group
commit), so concurrent clients share the cost of the disk.

Threads: everything public is called from one asyncio loop.  Journal writes run in a
dedicated single worker thread, so they stay in order; the snapshot is written by a
second thread, so a large snapshot never delays the acknowledgement of a mutation.

Layout of the state directory::

    lock                                  flock'd by the running server; holds its pid
    state.xml                             the snapshot (see .snapshot), seq = S
    journal-00000000000000001235.sxp      records 1235..; see .journal for the format
    .state.xml.tmp                        a snapshot being written (removed at start)

Compaction, when the journal outgrows ``max(compact_min_bytes, snapshot size)``: at a
flush boundary on the loop, capture the model (state at seq S) and rotate (the journal
thread closes the current file; the next write opens a new one), then write the
snapshot atomically in the snapshot thread and only then delete the journal files
whose records are all <= S.  A crash at any point leaves either the old snapshot with
all journals, or the new snapshot with journals whose extra records are skipped.
"""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import journal, snapshot
from .errors import JournalDamaged, SnapshotDamaged, StateDirLocked, StoreError, WriteRefused
from .fileio import fsync_dir, sync, write_all
from .journal import JournalFile
from .schema import Description, normalize
from .sink import Sink, TableSink
from .snapshot import Tables

__all__ = ["Capture", "JournalDamaged", "SnapshotDamaged", "Sink", "StateDirLocked", "Store", "StoreError",
           "TableSink", "Tables", "WriteRefused"]

log = logging.getLogger(__name__)

#: Returns freshly built encoded tables holding every op up to the returned seq, or an
#: awaitable of them (a capture made in slices between awaits, as of the moment it was asked).
Capture = Callable[[], tuple[Tables | Awaitable[Tables], int]]
#: Told the last durable seq when a write was refused: every later op is gone, undo them.
Rollback = Callable[[int], None]

LOCK_NAME = "lock"


class Store:
    """Journal + snapshot persistence for one state directory (see the module docstring)."""

    def __init__(
        self,
        state_dir: str | Path,
        description: Description,
        *,
        compact_min_bytes: int = 1 << 20,
        verify: bool = False,
    ):
        self.state_dir = Path(state_dir)
        self._description = description
        self._classes = normalize(description)
        self._compact_min = compact_min_bytes
        self._verify = verify  # validate the snapshot against the grammar even if it was when written
        self._capture: Capture | None = None
        self._rollback: Rollback | None = None
        self.refused: WriteRefused | None = None  # the last write refused (see _refuse)
        self._validator: snapshot.Validator | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._lock_fd: int | None = None
        self._io: ThreadPoolExecutor | None = None
        self._snap_io: ThreadPoolExecutor | None = None
        # Loop-thread state.
        self._last_seq = 0  # last op appended
        self._durable_seq = 0  # every op up to here is on disk
        self._buf: list[bytes] = []  # formatted records not yet handed to the writer
        self._pending_waiters: list[asyncio.Future[None]] = []
        self._inflight_upto = 0
        self._inflight_waiters: list[asyncio.Future[None]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._broken: StoreError | None = None
        self._compaction_task: asyncio.Task[StoreError | None] | None = None
        self._compact_requested = False
        self._compact_hold = 0  # after a failed compaction, wait until the journal is this big
        self._compact_error: StoreError | None = None
        # Writer-thread state (files list shared with the snapshot thread under the lock).
        self._files: list[JournalFile] = []
        self._files_lock = threading.Lock()
        self._cur: JournalFile | None = None
        self._fd: int | None = None
        self._written_seq = 0
        # Low-level I/O, replaceable by the fault-injection tests.
        self._write_all = write_all
        self._sync = sync
        # Counters for stats().
        self._fsyncs = 0
        self._records_written = 0
        self._snapshot_seq = 0
        self._snapshot_bytes = 0
        self._compactions = 0
        self._refusals = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> tuple[Tables, int]:
        """:meth:`open_into` encoded tables: ``(tables, last_seq)``, a table for every described class."""
        sink = TableSink(self._classes)
        return sink.tables, self.open_into(sink)

    def open_into(self, sink: Sink) -> int:
        """Lock the directory and recover: the snapshot's objects, then the journal's ops after
        it, go to ``sink`` one at a time as they are read (see :mod:`.sink`).

        Returns the last seq.  Raises StateDirLocked if another server holds the directory,
        StoreError if the state on disk is damaged (never guessing past damage); the sink
        has been given part of the state then.
        """
        if self._state != "new":
            raise StoreError("store already opened")
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create state directory {self.state_dir}: {exc.strerror or exc}"
            ) from exc
        self._lock()
        try:
            self._validator = snapshot.Validator(self._description)
            snapshot.remove_temp(self.state_dir)
            snap_path = self.state_dir / snapshot.SNAPSHOT_NAME
            if snap_path.exists():
                snap_seq = snapshot.load(snap_path, self._classes, self._validator, sink, verify=self._verify)
                self._snapshot_bytes = snap_path.stat().st_size
            else:
                snap_seq = 0
            last_seq, files = journal.replay(self.state_dir, self._classes, sink.apply, snap_seq)
            if files and files[-1].last == last_seq:
                # Carry on appending to the newest file instead of starting one per restart.
                self._cur = files[-1]
                self._fd = os.open(self._cur.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._unlock()
            raise StoreError(
                f"cannot read the state in {self.state_dir}: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
            ) from exc
        except BaseException:
            self._unlock()
            raise
        self._files = files
        self._snapshot_seq = snap_seq
        self._last_seq = self._durable_seq = self._written_seq = last_seq
        self._inflight_upto = last_seq
        self._io = ThreadPoolExecutor(1, thread_name_prefix="xend-ext-journal")
        self._snap_io = ThreadPoolExecutor(1, thread_name_prefix="xend-ext-snapshot")
        self._state = "open"
        return last_seq

    async def close(self) -> None:
        """Flush everything, write a final snapshot (if a capture is set), unlock.

        Safe to call more than once.  Raises StoreError only if some op could not be made
        durable (the lock is released all the same).
        """
        if self._state != "open":
            if self._state == "new":
                self._state = "closed"
            return
        self._state = "closing"
        error: StoreError | None = None
        try:
            try:
                if self._last_seq > self._durable_seq:
                    await self.durable(self._last_seq)
            except StoreError as exc:
                error = exc
            if self._flush_task is not None:
                await asyncio.shield(self._flush_task)
            if self._compaction_task is not None:
                await asyncio.shield(self._compaction_task)
            snap_exists = (self.state_dir / snapshot.SNAPSHOT_NAME).exists()
            if self._capture is not None and (self._last_seq > self._snapshot_seq or not snap_exists):
                task = self._start_compaction()
                failure = (await task) if task is not None else self._compact_error
                # A failed final snapshot is logged, not raised: the journal still has it all.
                if failure is None and self._snapshot_seq >= self._last_seq:
                    error = None  # the snapshot holds every op, written or not
        finally:
            self._shutdown()
        if error is not None:
            raise error

    def _shutdown(self) -> None:
        self._state = "closed"
        closed = StoreError("store is closed")
        self._fail(self._pending_waiters, closed)
        self._fail(self._inflight_waiters, closed)
        self._pending_waiters, self._inflight_waiters = [], []
        for executor in (self._io, self._snap_io):
            if executor is not None:
                executor.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._cur = None
        self._unlock()

    def _crash(self) -> None:
        """Fault injection: stop the way a killed server would (no flush, no snapshot)."""
        for task in (self._flush_task, self._compaction_task):
            if task is not None:
                task.cancel()
        self._buf = []
        self._shutdown()

    @property
    def broken(self) -> bool:
        """True after a failure that may have left the journal in an unknown state (fsync)."""
        return self._broken is not None

    # ------------------------------------------------------------------ locking

    def _lock(self) -> None:
        path = self.state_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StateDirLocked(self.state_dir, pid) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # before unlocking: the next owner writes its own pid
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ journal

    def append(self, op: tuple) -> int:
        """Buffer one op and return its seq; cheap and non-blocking.

        The op is checked against the description and formatted right away (ValueError
        if it is malformed), so the caller's values may change afterwards.
        """
        if self._state != "open":
            raise StoreError(f"store is {self._state}; cannot record {op[:3]!r}")
        seq = self._last_seq + 1
        self._buf.append(journal.format_record(seq, journal.encode_op(op, self._classes)))
        self._last_seq = seq
        if self._flush_task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop yet (start-up): the first durable() flushes
                return seq
            self._flush_task = loop.create_task(self._flush_loop())
        return seq

    async def durable(self, seq: int) -> None:
        """Return once every op up to ``seq`` is written and fsync'd; StoreError if not."""
        if seq <= self._durable_seq:
            return
        if self._broken is not None:
            raise self._broken
        if self._state not in ("open", "closing"):
            raise StoreError("store is closed")
        if seq > self._last_seq:
            if self.refused is not None:
                raise self.refused  # appended, then dropped with a refused write
            raise ValueError(f"seq {seq} was never appended (last is {self._last_seq})")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if seq <= self._inflight_upto:
            self._inflight_waiters.append(fut)
        else:
            self._pending_waiters.append(fut)
            if self._flush_task is None:
                self._flush_task = loop.create_task(self._flush_loop())
        await fut

    async def _flush_loop(self) -> None:
        """Write what is buffered, one batch at a time, until nothing is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._buf and self._broken is None and self._state != "closed":
                batch, waiters, upto = self._buf, self._pending_waiters, self._last_seq
                self._buf, self._pending_waiters = [], []
                self._inflight_upto, self._inflight_waiters = upto, waiters
                try:
                    await loop.run_in_executor(self._io, self._io_write, batch, upto)
                except asyncio.CancelledError:
                    # The thread may still write the batch: its fate is unknown.
                    self._broken = StoreError("journal flush interrupted; restart the server")
                    self._fail(waiters, self._broken)
                    raise
                except (OSError, RuntimeError, StoreError) as exc:
                    if self._broken is not None:
                        self._fail(waiters, self._broken)
                        break
                    self._refuse(waiters, exc)
                    break
                self._durable_seq = upto
                self._inflight_waiters = []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
                self._maybe_compact()
        finally:
            self._flush_task = None
            if self._broken is not None:
                self._fail(self._pending_waiters, self._broken)
                self._pending_waiters = []

    def _refuse(self, waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
        """Nothing of the batch is on disk (the writer truncated it away): drop it and every op
        appended after it (they may build on it), tell the model to undo them, fail the waiters."""
        error = exc if isinstance(exc, WriteRefused) else WriteRefused(self.state_dir, str(exc))
        log.error("%s; the changes not yet written are undone", error)
        waiters = waiters + self._pending_waiters
        self._buf, self._pending_waiters, self._inflight_waiters = [], [], []
        self._last_seq = self._inflight_upto = self._durable_seq
        self._refusals += 1
        self.refused = error
        if self._rollback is not None:
            self._rollback(self._durable_seq)
        self._fail(waiters, error)

    @staticmethod
    def _fail(waiters: list[asyncio.Future[None]], error: StoreError) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)

    # Writer thread ---------------------------------------------------------------

    def _io_write(self, batch: list[bytes], upto: int) -> None:
        if self._fd is None:
            self._io_open_file(self._written_seq + 1)
        cur, fd = self._cur, self._fd
        assert cur is not None and fd is not None
        data = b"".join(batch)
        try:
            self._write_all(fd, data)
        except OSError as exc:
            try:
                os.ftruncate(fd, cur.size)  # no half batch may stay before later records
            except OSError as exc2:
                self._broken = StoreError(
                    f"journal {cur.path}: write failed ({exc}) and could not be undone "
                    f"({exc2}); restart the server"
                )
                raise self._broken from exc
            raise WriteRefused(cur.path, exc.strerror or str(exc)) from exc
        try:
            self._sync(fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the pages: never retry.
            self._broken = StoreError(
                f"fsync of journal {cur.path} failed ({exc.strerror or exc}); the server "
                "cannot promise durability any more, restart it"
            )
            raise self._broken from exc
        self._fsyncs += 1
        self._records_written += len(batch)
        with self._files_lock:
            cur.size += len(data)
            cur.last = upto
        self._written_seq = upto

    def _io_open_file(self, first: int) -> None:
        path = self.state_dir / journal.file_name(first)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise WriteRefused(path, exc.strerror or str(exc)) from exc
        try:
            fsync_dir(self.state_dir)  # the new name must survive before its records count
        except OSError as exc:
            os.close(fd)
            raise WriteRefused(path, exc.strerror or str(exc)) from exc
        jf = JournalFile(first, path)
        with self._files_lock:
            self._files.append(jf)
            self._cur, self._fd = jf, fd

    def _io_rotate(self) -> None:
        """Close the current file; the next write starts a new one."""
        cur, fd = self._cur, self._fd
        if cur is None or fd is None or cur.last is None:
            return  # nothing in it that a snapshot could make redundant
        with self._files_lock:
            self._cur, self._fd = None, None
        os.close(fd)

    # ------------------------------------------------------------------ compaction

    def set_rollback(self, rollback: Rollback | None) -> None:
        """Register what undoes the model's ops after a refused write (see :meth:`_refuse`)."""
        self._rollback = rollback

    def set_capture(self, capture: Capture | None) -> None:
        """Register how to get the model's current state (called on the loop thread)."""
        self._capture = capture

    def request_compaction(self, capture: Capture | None = None) -> None:
        """Ask for a snapshot at the next flush boundary (now, if nothing is in flight)."""
        if capture is not None:
            self._capture = capture
        self._compact_requested = True
        if self._flush_task is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self._maybe_compact()

    async def compact(self) -> None:
        """Write a snapshot now and drop the journal files it covers; StoreError on failure."""
        if self._state != "open":
            raise StoreError(f"store is {self._state}")
        if self._capture is None:
            raise StoreError("no capture registered (Store.set_capture)")
        while self._compaction_task is not None:
            await asyncio.shield(self._compaction_task)
        task = self._start_compaction()
        failure = (await task) if task is not None else self._compact_error
        if failure is not None:
            raise failure

    def _journal_bytes(self) -> int:
        with self._files_lock:
            return sum(f.size for f in self._files)

    def _maybe_compact(self) -> None:
        if self._capture is None or self._compaction_task is not None or self._state != "open":
            return
        if self._compact_requested:
            self._compact_requested = False
            self._start_compaction()
        elif self._journal_bytes() > max(self._compact_min, self._snapshot_bytes, self._compact_hold):
            self._start_compaction()

    def _start_compaction(self) -> asyncio.Task[StoreError | None] | None:
        """Capture and rotate now (on the loop); the snapshot is written in the background."""
        assert self._capture is not None
        loop = asyncio.get_running_loop()
        try:
            tables, seq = self._capture()
            if not self._snapshot_seq <= seq <= self._last_seq:
                raise StoreError(
                    f"capture returned seq {seq}, outside {self._snapshot_seq}..{self._last_seq}"
                )
        except Exception as exc:
            self._compaction_failed(exc if isinstance(exc, StoreError) else StoreError(
                f"capture of the model state failed: {exc!r}"
            ))
            return None
        rotated = loop.run_in_executor(self._io, self._io_rotate)
        task = loop.create_task(self._finish_compaction(rotated, tables, seq))
        self._compaction_task = task
        return task

    async def _finish_compaction(
        self, rotated: asyncio.Future[None], tables: Tables | Awaitable[Tables], seq: int
    ) -> StoreError | None:
        loop = asyncio.get_running_loop()
        try:
            try:
                if inspect.isawaitable(tables):
                    tables = await tables
            except Exception as exc:  # noqa: BLE001 - a bug in the capture: keep the journal
                raise StoreError(f"capture of the model state failed: {exc!r}") from exc
            finally:
                await rotated
            if seq > self._durable_seq and self._broken is None:
                try:  # a refused write takes back ops the copy holds: then no snapshot
                    await self.durable(seq)
                except WriteRefused:
                    raise
                except StoreError:
                    if self._broken is None:
                        raise  # else nothing is taken back any more: the model is the truth
            await loop.run_in_executor(self._snap_io, self._write_snapshot, tables, seq)
        except (OSError, StoreError) as exc:
            return self._compaction_failed(
                exc if isinstance(exc, StoreError) else StoreError(
                    f"cannot write snapshot in {self.state_dir}: {exc}"
                )
            )
        finally:
            self._compaction_task = None
        self._compactions += 1
        self._compact_hold = 0
        self._compact_error = None
        return None

    def _compaction_failed(self, error: StoreError) -> StoreError:
        log.error("compaction failed, keeping the journal: %s", error)
        self._compact_error = error
        # Do not retry on every flush: wait until the journal has grown as much again.
        self._compact_hold = 2 * max(self._journal_bytes(), self._compact_min)
        return error

    def _write_snapshot(self, tables: Tables, seq: int) -> None:
        """Snapshot thread: serialize, write temp, rename, then drop covered journals."""
        assert self._validator is not None
        data = snapshot.serialize(tables, seq, self._classes, self._validator)
        tmp = snapshot.write_temp(self.state_dir, data)
        snapshot.commit(self.state_dir, tmp)
        self._snapshot_seq = seq
        self._snapshot_bytes = len(data)
        self._delete_journals(seq)

    def _delete_journals(self, upto: int) -> None:
        """Remove journal files (other than the one being written) with no record > upto."""
        with self._files_lock:
            doomed = [
                f for f in self._files
                if f is not self._cur and (f.last is None or f.last <= upto)
            ]
            self._files = [f for f in self._files if all(f is not d for d in doomed)]
        for f in doomed:
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass
        if doomed:
            fsync_dir(self.state_dir)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, int]:
        """Counters for tests and the benchmark."""
        with self._files_lock:
            files = list(self._files)
        return {
            "last_seq": self._last_seq,
            "durable_seq": self._durable_seq,
            "pending_records": len(self._buf),
            "journal_files": len(files),
            "journal_bytes": sum(f.size for f in files),
            "journal_records": self._records_written,
            "fsyncs": self._fsyncs,
            "snapshot_seq": self._snapshot_seq,
            "snapshot_bytes": self._snapshot_bytes,
            "compactions": self._compactions,
            "refused_writes": self._refusals,
        }


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

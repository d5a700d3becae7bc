"""``python -m bench --scale``: the six measures of issue 15 (P1-P6), xend-ext beside the reference.

Order of a run:

* P1, small call: both servers with 8 host CPUs; ``host.get_record`` at 16 keep-alive clients.
* For each size (1k, 10k, 100k VMs; quick mode: 1k, 10k): a state directory with that many VMs
  and as many journal records (bench/statebuild.py, cached in ``var/bench-states``).  xend-ext
  starts on a copy of it and the reference reads its snapshot; the time from process start to
  the first answered login is P4, the resident memory right after is P6.  Then, at 1k and 10k,
  P3 (``VM.get_all_records`` and ``get_all_records_where``, one client, server CPU per call),
  and at every size P2 (VM mutations at 16 clients: calls/s and server CPU per call).
* P5: xend-ext on 100 VMs, 100 then 1,000 ``event.from`` watchers (bench/watchers.py).

Comparisons are interleaved: each cell runs ``rounds`` times, xend-ext then the reference, the
two servers alive side by side, so that every ratio comes from one run on the same machine; the
report gives the median and the spread (min-max) of the rounds.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import report, scalereport, servers, statebuild, watchers
from bench.cli import run_cell
from bench.httpclient import Endpoint
from bench.loadgen import GET_ALL_RECORDS, GET_ALL_RECORDS_WHERE, SMALL_CALL, VM_WRITE
from bench.report import CellResult

FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
#: P3 runs at these sizes only (at 100k VMs one reply is some 150 MB of XML).
P3_SIZES = (1_000, 10_000)
#: Above this size the reference's VM writes run with one client: they are serialised under its
#: lock anyway (so its calls/s does not depend on the client count), and sixteen writes of a
#: 10k-VM state (3 s each) in flight at the end of a window take a minute to drain.
REFERENCE_WRITERS_UP_TO = 1_000
WATCHER_COUNTS = (100, 1_000)
WATCHED_VMS = 100
SMALL_CALL_CPUS = 8
CACHE = servers.REPO_ROOT / "var" / "bench-states"


@dataclass
class Figures:
    """Every repeated figure, by measure and server, plus notes and problems for the report."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, measure: str, server: str, value: float) -> None:
        if not math.isnan(value):
            self.values.setdefault(measure, {}).setdefault(server, []).append(value)

    def note(self, measure: str, text: str) -> None:
        self.notes.setdefault(measure, []).append(text)

    def median(self, measure: str, server: str) -> float:
        found = self.values.get(measure, {}).get(server)
        return statistics.median(found) if found else math.nan


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cell_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(seconds=args.seconds, warmup=args.warmup, in_process=args.in_process)


def _record_cell(figures: Figures, cell: CellResult, prefix: str, cpu_scale: float) -> None:
    """calls/s and server CPU per call (in µs / cpu_scale) of one cell; failures as problems."""
    where = f"{prefix} {cell.server}"
    if cell.error:
        figures.problems.append(f"{where}: {cell.error.splitlines()[0]}")
        return
    if cell.failures:
        figures.problems.append(f"{where}: {cell.failures} failed calls: {'; '.join(cell.failure_samples)}")
    figures.add(f"{prefix} rate", cell.server, cell.calls_per_s)
    figures.add(f"{prefix} cpu", cell.server, cell.server_cpu_us_per_call / cpu_scale)
    figures.add(f"{prefix} p99", cell.server, cell.p99_ms)


def _interleave(
    figures: Figures,
    running: dict[str, servers.ServerProcess],
    args: argparse.Namespace,
    prefix: str,
    phase: str,
    clients: Callable[[str], int],
    cpu_scale: float = 1.0,
) -> None:
    """``rounds`` times: the cell against each running server in turn."""
    for round_no in range(args.rounds):
        for name, server in running.items():
            if server.popen.poll() is not None:
                figures.problems.append(f"{prefix} {name}: server gone: {server.exit_report().splitlines()[0]}")
                continue
            n = clients(name)
            cell = run_cell(server, phase, n, _cell_args(args), f"{args.tag}-{phase}-{round_no}")
            _record_cell(figures, cell, prefix, cpu_scale)
            rate = "-" if math.isnan(cell.calls_per_s) else f"{cell.calls_per_s:,.1f}/s"
            cpu = "-" if math.isnan(cell.server_cpu_us_per_call) else f"{cell.server_cpu_us_per_call:,.0f} µs"
            _progress(f"  {prefix} {name} round {round_no + 1} ({n} client{'s' * (n > 1)}): {rate}, cpu {cpu}/call")


def _start(
    figures: Figures, name: str, state: Path | None, args: argparse.Namespace, measure: str | None
) -> servers.ServerProcess | None:
    """Start a server on a built state; its start time is P4 and its memory P6 when ``measure``."""
    try:
        server = servers.start(name, SMALL_CALL_CPUS, state, timeout=args.start_timeout, login=True)
    except (servers.ServerStartError, OSError) as exc:
        figures.problems.append(f"{name} did not start: {str(exc).splitlines()[0]}")
        if measure is not None:
            figures.note(f"P4 start@{measure}", f"{name}: no login answered within {args.start_timeout:.0f} s")
        _progress(f"  {name} did not start: {str(exc).splitlines()[0]}")
        return None
    if measure is not None:
        figures.add(f"P4 start@{measure}", name, server.ready_s)
        figures.add(f"P6 rss@{measure}", name, server.rss_bytes() / 2**20)
        _progress(f"  {name}: login answered {server.ready_s:.2f} s after start, RSS {server.rss_bytes() >> 20} MB")
    return server


def _stop_all(running: dict[str, servers.ServerProcess]) -> None:
    for server in running.values():
        server.stop()
    running.clear()


def run_small_call(figures: Figures, args: argparse.Namespace) -> None:
    _progress("P1: host.get_record at 16 clients")
    running: dict[str, servers.ServerProcess] = {}
    try:
        # the floor (the I/O alone) beside xend-ext, in the same rounds
        floor = [servers.FLOOR] if servers.XEND_EXT in args.servers else []
        for name in [*args.servers, *floor]:
            server = _start(figures, name, None, args, None)
            if server is not None:
                running[name] = server
        _interleave(figures, running, args, "P1", SMALL_CALL, lambda name: 16)
    finally:
        _stop_all(running)


def run_size(figures: Figures, args: argparse.Namespace, vms: int) -> None:
    """P4, P6, then P3 (small sizes) and P2 on one state of ``vms`` VMs + as many records."""
    began = time.monotonic()
    state, built = statebuild.cached_state_dir(args.cache, vms, vms)
    if built is not None:
        figures.note("build", f"{vms:,} VMs + {vms:,} records built in {built['seconds']:.1f} s "
                              f"({built['snapshot_bytes'] / 2**20:.0f} MB snapshot)")
    _progress(f"{vms:,} VMs: state ready in {time.monotonic() - began:.1f} s ({state.name})")
    running: dict[str, servers.ServerProcess] = {}
    try:
        for name in args.servers:
            if name in args.gave_up:
                figures.note(f"P4 start@{vms}", f"{name}: not tried (no login answered at {args.gave_up[name]:,} VMs)")
                continue
            server = _start(figures, name, state, args, f"{vms}")
            if server is None:
                args.gave_up[name] = vms  # a larger state will not start faster
            else:
                running[name] = server
        if vms in P3_SIZES and "P3" in args.measures:
            # a millisecond figure: server CPU per call / 1000
            _interleave(figures, running, args, f"P3 all@{vms}", GET_ALL_RECORDS, lambda name: 1, 1000.0)
            _interleave(figures, running, args, f"P3 where@{vms}", GET_ALL_RECORDS_WHERE, lambda name: 1, 1000.0)
        if vms > REFERENCE_WRITERS_UP_TO and servers.REFERENCE in running:
            figures.note(f"P2 {vms}", "reference: 1 client (its writes are serialised by one lock), "
                                      f"each cell bounded by {args.seconds:g} s + the call in flight")
        if "P2" in args.measures:
            _interleave(figures, running, args, f"P2 {vms}", VM_WRITE,
                        lambda name: 1 if name == servers.REFERENCE and vms > REFERENCE_WRITERS_UP_TO else 16)
    finally:
        _stop_all(running)


def run_watchers(figures: Figures, args: argparse.Namespace) -> None:
    if servers.XEND_EXT not in args.servers:
        return
    _progress(f"P5: event.from watchers on {WATCHED_VMS} VMs")
    state, _ = statebuild.cached_state_dir(args.cache, WATCHED_VMS, 0)
    server = _start(figures, servers.XEND_EXT, state, args, None)
    if server is None:
        return
    with server:
        for count in args.watchers:
            outcome = watchers.run(Endpoint(servers.HOST, server.port, keep_alive=True), count, args.watch_rounds,
                                   server.cpu_seconds_fine)
            measure = f"P5 {count}"
            if outcome.error:
                figures.problems.append(f"{measure}: {outcome.error}")
            if outcome.lost:
                figures.problems.append(f"{measure}: {outcome.lost} replies not delivered within "
                                        f"{watchers.ROUND_LIMIT:.0f} s")
            figures.add(f"{measure} p99", servers.XEND_EXT, outcome.percentile(0.99))
            figures.add(f"{measure} p50", servers.XEND_EXT, outcome.percentile(0.50))
            for ms in outcome.write_ms:
                figures.add(f"{measure} write", servers.XEND_EXT, ms)
            for server_us, client_us in zip(outcome.server_us, outcome.client_us, strict=True):
                figures.add(f"{measure} cpu", servers.XEND_EXT, server_us)
                figures.add(f"{measure} client", servers.XEND_EXT, client_us)
            _progress(f"  {count} watchers: p50 {outcome.percentile(0.5):.1f} ms, p99 "
                      f"{outcome.percentile(0.99):.1f} ms over {outcome.rounds} mutations")


def reprint(args: argparse.Namespace) -> int:
    """The report of an earlier run again, from its ``--json`` file (``--from-json``)."""
    with open(args.from_json, encoding="utf-8") as stream:
        saved = json.load(stream)
    figures = Figures(saved["values"], saved["notes"], saved["problems"])
    args.rounds, args.seconds = saved["rounds"], saved["seconds"]
    args.watchers = saved.get("watchers", args.watchers)
    args.measures = saved.get("measures", args.measures)
    print(scalereport.render(figures, saved["machine"], args, tuple(saved["sizes"]), saved.get("elapsed", math.nan)))
    return 0


def main(args: argparse.Namespace) -> int:
    """Run P1-P6 and print the report (Markdown table first)."""
    if args.from_json:
        return reprint(args)
    args.tag = uuid.uuid4().hex[:8]
    args.gave_up = {}
    args.servers = [args.only] if args.only else list(servers.SERVERS)
    args.cache = Path(args.state_cache) if args.state_cache else CACHE
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    machine = report.machine_info()
    figures = Figures()
    began = time.monotonic()
    machine["load"] = [round(os.getloadavg()[0], 2)]
    if "P1" in args.measures:
        run_small_call(figures, args)
    if {"P2", "P3", "P4", "P6"} & set(args.measures):
        for vms in sizes:
            run_size(figures, args, vms)
    else:
        sizes = ()
    if "P5" in args.measures:
        run_watchers(figures, args)
    machine["load"].append(round(os.getloadavg()[0], 2))
    elapsed = time.monotonic() - began
    _progress(f"done in {elapsed:.0f} s\n")
    print(scalereport.render(figures, machine, args, sizes, elapsed))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"machine": machine, "sizes": list(sizes), "measures": args.measures,
                       "rounds": args.rounds, "seconds": args.seconds,
                       "watchers": args.watchers, "elapsed": elapsed,
                       "values": figures.values, "notes": figures.notes, "problems": figures.problems},
                      stream, indent=1)
            stream.write("\n")
    return 0

"""Command line and orchestration: which servers, phases and client counts.

Each (server, phase) pair gets a fresh server process, so that one phase's
state (10k objects, keys added by writes) never colours another's figures;
the client counts of a phase then run in turn against that process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid

from bench import report, servers
from bench.httpclient import Endpoint
from bench.loadgen import PHASES, SMALL_CALL, CellSpec, measure
from bench.report import CellResult

#: host.get_record lists every host_CPU ref, so the small-call phase runs on
#: a server with xend-ext's default CPU count to keep the record small.
SMALL_CALL_CPUS = 8
#: Stored objects for the durable-write phase (host_cpus; plus the host).
DURABLE_WRITE_OBJECTS = 10_000


MEASURES = ("P1", "P2", "P3", "P4", "P5", "P6")


def _measures(text: str) -> list[str]:
    chosen = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = set(chosen) - set(MEASURES)
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"measures are some of {','.join(MEASURES)}, not {text}")
    return chosen


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; the defaults give the client-count sweep (about 1-2 minutes)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure xend-ext against a reference server built like xend.",
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured time per cell (3; --quick 1)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time per cell (0.5)")
    parser.add_argument("--clients", type=_client_counts, default=[1, 4, 16], help="concurrent clients (1,4,16)")
    parser.add_argument("--only", choices=servers.SERVERS, help="run one server only")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument(
        "--objects",
        type=int,
        default=DURABLE_WRITE_OBJECTS,
        help=f"stored host_cpu objects in the durable-write phase ({DURABLE_WRITE_OBJECTS})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    scale = parser.add_argument_group("scale run (P1-P6 of issue 15, bench/scale.py)")
    scale.add_argument("--scale", action="store_true", help="run P1-P6 instead of the client-count sweep")
    scale.add_argument("--quick", action="store_true", help="with --scale: 1k and 10k VMs, 2 rounds of 1 s")
    scale.add_argument("--measures", type=_measures, default=list(MEASURES),
                       help="with --scale: which of P1-P6 to run, e.g. P1,P5 (all)")
    scale.add_argument("--rounds", type=int, default=None, help="interleaved rounds per cell (3; --quick 2)")
    scale.add_argument("--sizes", type=_client_counts, default=None, help="VM counts (1000,10000,100000)")
    scale.add_argument("--watchers", type=_client_counts, default=[100, 1000], help="event.from watchers (100,1000)")
    scale.add_argument("--watch-rounds", type=int, default=5, help="measured mutations per watcher count (5)")
    scale.add_argument("--start-timeout", type=float, default=180.0,
                       help="seconds a server may take to answer its first login (180)")
    scale.add_argument("--state-cache", metavar="DIR", help="where built states are kept (var/bench-states)")
    scale.add_argument("--from-json", metavar="FILE", help="with --scale: print the report of a --json file again")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the load generator in this process instead of a child process",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cell(server: servers.ServerProcess, phase: str, clients: int, args: argparse.Namespace, tag: str) -> CellResult:
    """Measure one cell and turn the raw outcome into per-call figures."""
    endpoint = Endpoint(servers.HOST, server.port, keep_alive=server.name != servers.REFERENCE)
    spec = CellSpec(phase, clients, args.seconds, args.warmup, endpoint, f"{tag}-{clients}")
    cpu: dict[str, float] = {}

    def checkpoint(name: str) -> None:
        cpu[name] = server.cpu_seconds()

    outcome = measure(spec, checkpoint, separate_process=not args.in_process)
    cell = CellResult(
        phase=phase,
        clients=clients,
        server=server.name,
        objects=server.objects,
        calls=outcome.calls,
        failures=outcome.failures,
        elapsed_s=outcome.elapsed,
        p50_ms=outcome.p50_ms,
        p99_ms=outcome.p99_ms,
        connects=outcome.connects,
        failure_samples=outcome.failure_samples,
        error=outcome.error,
    )
    if outcome.calls and outcome.elapsed > 0:
        cell.calls_per_s = outcome.calls / outcome.elapsed
        cell.gen_cpu_us_per_call = outcome.gen_cpu_s / outcome.calls * 1e6
        if "start" in cpu and "end" in cpu:
            cell.server_cpu_us_per_call = (cpu["end"] - cpu["start"]) / outcome.calls * 1e6
    if server.popen.poll() is not None:
        died = f"server {server.exit_report()}"
        cell.error = f"{cell.error}; {died}" if cell.error else died
    return cell


def _row(cell: CellResult) -> str:
    if cell.error:
        return f"  {cell.phase}@{cell.clients} {cell.server}: ERROR {cell.error.splitlines()[0]}"
    rate = "-" if math.isnan(cell.calls_per_s) else f"{cell.calls_per_s:,.0f}"
    fails = f", {cell.failures} failed" if cell.failures else ""
    return f"  {cell.phase}@{cell.clients} {cell.server}: {rate} calls/s{fails}"


def main(argv: list[str] | None = None) -> int:
    """Run every requested cell, print the table, optionally write JSON."""
    args = parse_args(argv)
    if args.scale:
        from bench import scale

        return scale.main(args)
    machine = report.machine_info()
    names = [args.only] if args.only else list(servers.SERVERS)
    run_tag = uuid.uuid4().hex[:8]
    results: list[CellResult] = []
    began = time.monotonic()

    for name in names:
        for phase in args.phases:
            objects = SMALL_CALL_CPUS if phase == SMALL_CALL else args.objects
            _progress(f"{name}: starting with {objects} host_cpus for {phase}")
            try:
                server = servers.start(name, objects)
            except (servers.ServerStartError, OSError) as exc:
                _progress(f"  {name} did not start: {str(exc).splitlines()[0]}")
                results += [
                    CellResult(phase, n, name, objects, error=f"server did not start: {exc}") for n in args.clients
                ]
                continue
            with server:
                for clients in args.clients:
                    if server.popen.poll() is not None:
                        gone = f"not run: server had {server.exit_report().splitlines()[0]}"
                        results.append(CellResult(phase, clients, name, objects, error=gone))
                        continue
                    cell = run_cell(server, phase, clients, args, f"{run_tag}-{phase}")
                    results.append(cell)
                    _progress(_row(cell))

    _progress(f"done in {time.monotonic() - began:.0f} s\n")
    print(report.render(results, machine, args.clients))
    if args.json:
        settings = {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "clients": args.clients,
            "phases": args.phases,
            "small_call_cpus": SMALL_CALL_CPUS,
            "durable_write_objects": args.objects,
            "generator": "in-process" if args.in_process else "separate process",
        }
        report.write_json(args.json, results, machine, settings)
    return 0

"""P4 and P6 alone: ``python -m bench.coldstart [--sizes 10000,100000] [--rounds 3] [--baseline DIR]``.

Starts xend-ext on the bench's built states (bench/statebuild.py: N VMs + N journal records) and
measures, each time on a fresh copy of the state: the wall time from the process start to its
first answered login (P4), the CPU time the server used for it (user + system: less disturbed
than wall time by other work on the machine), and its resident memory right after (P6).  With
``--baseline DIR`` (a checkout of another version, e.g. ``git archive main | tar -x -C DIR``),
that version starts too, interleaved round by round with this one, so the comparison comes from
one run on the same machine; it starts on a state its own code built (in DIR/var/bench-states),
as the versions may store it differently.  Prints a Markdown table (median and min-max of the rounds); asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import servers, statebuild
from bench.scale import CACHE, SMALL_CALL_CPUS


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    mid = statistics.median(values)
    spread = f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if len(values) > 1 else ""
    return f"{mid:.{digits}f}{spread}"


def _state_of(code: Path | None, vms: int, cache: Path) -> Path:
    """The built state of ``vms`` VMs + as many records, as the version in ``code`` builds it."""
    if code is None:
        return statebuild.cached_state_dir(cache, vms, vms)[0]
    build = ("import sys; from bench import statebuild; from bench.scale import CACHE; "
             f"print(statebuild.cached_state_dir(CACHE, {vms}, {vms})[0])")
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", build], cwd=code, env=env, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[10_000, 100_000], help="VM counts (10000,100000)")
    parser.add_argument("--rounds", type=int, default=3, help="starts per server and size (3)")
    parser.add_argument("--baseline", type=Path, help="a checkout of another version to start in turn")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds allowed to answer a login")
    parser.add_argument("--state-cache", type=Path, default=CACHE, help="where built states are kept")
    args = parser.parse_args(argv)
    versions: dict[str, Path | None] = {"this": None}
    if args.baseline:
        versions["baseline"] = args.baseline.resolve()
    results: dict[tuple[int, str], dict[str, list[float]]] = {}
    for vms in args.sizes:
        states = {name: _state_of(code, vms, args.state_cache) for name, code in versions.items()}
        for round_no in range(args.rounds):
            for name, code in versions.items():
                state = states[name]
                figures = results.setdefault((vms, name), {"wall": [], "cpu": [], "rss": []})
                try:
                    server = servers.start(servers.XEND_EXT, SMALL_CALL_CPUS, state, timeout=args.start_timeout,
                                           login=True, code=code)
                except (servers.ServerStartError, OSError) as exc:
                    print(f"{vms} VMs, {name}: did not start: {str(exc).splitlines()[0]}", file=sys.stderr)
                    continue
                with server:
                    figures["wall"].append(server.ready_s)
                    figures["cpu"].append(server.cpu_seconds())
                    figures["rss"].append(server.rss_bytes() / 2**20)
                print(f"{vms} VMs, {name}, round {round_no + 1}: login after {server.ready_s:.2f} s, "
                      f"cpu {figures['cpu'][-1]:.2f} s, RSS {figures['rss'][-1]:.0f} MB", file=sys.stderr, flush=True)
    print("| VMs + records | version | P4 start → login (s) | CPU used (s) | P6 RSS (MB) |")
    print("|---|---|---|---|---|")
    for (vms, name), figures in results.items():
        print(f"| {vms:,} + {vms:,} | {name} | {_cell(figures['wall'], 2)} | {_cell(figures['cpu'], 2)} "
              f"| {_cell(figures['rss'], 0)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

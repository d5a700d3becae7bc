"""The report of ``python -m bench --scale``: one Markdown table (pasted as is into the README's
"Performance" section), then notes and problems.

Each figure is the median of its rounds with the spread (min-max) beside it.  The "better"
column is how many times xend-ext beats the reference on that figure (for costs, reference /
xend-ext; for calls/s, xend-ext / reference), from medians of the same interleaved run.  The
goals are issue 15's; "met" is information for the reader, never an exit status.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.servers import FLOOR, REFERENCE, XEND_EXT

if TYPE_CHECKING:
    from bench.scale import Figures


@dataclass(frozen=True)
class Row:
    label: str
    measure: str
    unit: str
    digits: int
    lower_is_better: bool = True
    goal: str = ""
    limit: float = math.nan  # the goal on xend-ext's median: <= limit (lower) or >= limit (higher)
    min_ratio: float = math.nan  # the goal on the "better" ratio
    server: str = XEND_EXT  # whose figure the row shows (another than xend-ext: no reference, no ratio)


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _rows(sizes: tuple[int, ...], watcher_counts: tuple[int, ...]) -> list[Row]:
    rows = [
        Row("P1 `host.get_record`, 16 keep-alive clients: server CPU per call", "P1 cpu", "µs", 0,
            goal="≤ 60 µs", limit=60),
        Row("P1 `host.get_record`, 16 clients: calls/s", "P1 rate", "/s", 0, lower_is_better=False),
        Row("P1 floor: a bare protocol on the same loop answering a reply of the same size, 16 clients: "
            "server CPU per call", "P1 cpu", "µs", 0, server=FLOOR),
    ]
    for n in sizes:
        big = n >= 10_000
        rows.append(Row(f"P2 VM mutations, 16 clients, {_k(n)} VMs: calls/s", f"P2 {n} rate", "/s", 0,
                        lower_is_better=False, goal="≥ 3,500/s, ≥ 100×" if big else "",
                        limit=3500 if big else math.nan, min_ratio=100 if big else math.nan))
        rows.append(Row(f"P2 VM mutations, {_k(n)} VMs: server CPU per call", f"P2 {n} cpu", "µs", 0))
    for n in sizes:
        if n <= 10_000:
            at10k = n == 10_000
            rows.append(Row(f"P3 `VM.get_all_records`, {_k(n)} VMs: server CPU per call", f"P3 all@{n} cpu",
                            "ms", 1, goal="≤ 40 ms" if at10k else "", limit=40 if at10k else math.nan))
            rows.append(Row(f"P3 `get_all_records_where` name = \"vm-42\", {_k(n)} VMs: server CPU per call",
                            f"P3 where@{n} cpu", "ms", 2, goal="≤ 5 ms" if at10k else "",
                            limit=5 if at10k else math.nan))
    for n in sizes:
        top = n >= 100_000
        rows.append(Row(f"P4 cold start, {_k(n)} VMs + {_k(n)} journal records: start → login answered",
                        f"P4 start@{n}", "s", 2, goal="≤ 3 s" if top else "", limit=3 if top else math.nan))
    for w in watcher_counts:
        rows.append(Row(f"P5 {w:,} `event.from` watchers, one mutation: delivery p99", f"P5 {w} p99", "ms", 1,
                        goal="≤ 50 ms", limit=50))
        rows.append(Row(f"P5 {w:,} watchers: delivery p50; the mutation's own reply (write)", f"P5 {w} p50", "ms", 1))
        rows.append(Row(f"P5 {w:,} watchers: CPU per delivery, server; the watchers' process", f"P5 {w} cpu", "µs", 0))
    for n in sizes:
        top = n >= 100_000
        rows.append(Row(f"P6 RSS holding {_k(n)} VMs", f"P6 rss@{n}", "MB", 0,
                        goal="≤ 400 MB" if top else "", limit=400 if top else math.nan))
    return rows


def _num(value: float, digits: int) -> str:
    if 0 < abs(value) < 1 and digits < 2:  # the reference's 0.077 writes/s: two significant digits
        return f"{value:.2g}"
    return f"{value:,.{max(digits, 1 if abs(value) < 10 else 0)}f}"


def _with_unit(text: str, unit: str) -> str:
    return f"{text}{unit}" if unit.startswith("/") else f"{text} {unit}"


def _cell(values: list[float] | None, row: Row) -> str:
    if not values:
        return "—"
    values = sorted(values)
    mid = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    text = _with_unit(_num(mid, row.digits), row.unit)
    if len(values) > 1:
        text += f" ({_num(values[0], row.digits)}–{_num(values[-1], row.digits)})"
    return text


def _ratio_text(ratio: float) -> str:
    if math.isnan(ratio):
        return "—"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def _verdict(row: Row, mine: float, ratio: float) -> str:
    checks = []
    if not math.isnan(row.limit):
        if math.isnan(mine):
            return "not measured"
        checks.append(mine <= row.limit if row.lower_is_better else mine >= row.limit)
    if not math.isnan(row.min_ratio):
        checks.append(not math.isnan(ratio) and ratio >= row.min_ratio)
    if not checks:
        return ""
    return "met" if all(checks) else "**not met**"


def table(figures: Figures, sizes: tuple[int, ...], watcher_counts: tuple[int, ...],
          measures: list[str] | None = None) -> list[str]:
    """The Markdown table: one line per row of :func:`_rows` (of ``measures``, default all) plus
    the growth of a VM mutation."""
    lines = [
        "| measure | goal | xend-ext | reference | xend-ext better by | goal |",
        "|---|---|---|---|---|---|",
    ]
    for row in _rows(sizes, watcher_counts):
        if measures is not None and row.measure.split()[0] not in measures:
            continue
        if row.server != XEND_EXT:
            lines.append(f"| {row.label} | | {_cell(figures.values.get(row.measure, {}).get(row.server), row)} "
                         "| — | — | |")
            continue
        if row.measure.startswith("P5 ") and row.measure.endswith((" p50", " cpu")):
            second, named = (" write", "write ") if row.measure.endswith(" p50") else (" client", "")
            mine_values = figures.values.get(row.measure, {}).get(XEND_EXT)
            other = figures.values.get(row.measure[:-4] + second, {}).get(XEND_EXT)
            text = _cell(mine_values, row)
            if other:
                text += f"; {named}{_cell(other, row)}"
            lines.append(f"| {row.label} | | {text} | — | — | |")
            continue
        mine = figures.median(row.measure, XEND_EXT)
        shown = {name: _cell(figures.values.get(row.measure, {}).get(name), row) for name in (XEND_EXT, REFERENCE)}
        for text in figures.notes.get(row.measure, []):  # "<server>: no login answered within N s"
            name, _, why = text.partition(": ")
            if shown.get(name) == "—":
                shown[name] = f"> {why.rsplit('within ', 1)[-1]}" if "within" in why else "not tried"
        ref = figures.median(row.measure, REFERENCE)
        ratio = ref / mine if row.lower_is_better else mine / ref
        if math.isnan(ref) or math.isnan(mine) or mine == 0 or ref == 0:
            ratio = math.nan
        lines.append(f"| {row.label} | {row.goal} | {shown[XEND_EXT]} | {shown[REFERENCE]} | {_ratio_text(ratio)} "
                     f"| {_verdict(row, mine, ratio)} |")
    small, large = min(sizes, default=0), max(sizes, default=0)
    if large > small and (measures is None or "P2" in measures):
        growth = figures.median(f"P2 {large} cpu", XEND_EXT) / figures.median(f"P2 {small} cpu", XEND_EXT)
        shown = "—" if math.isnan(growth) else f"{growth:.2f}×"
        verdict = "" if math.isnan(growth) else "met" if growth <= 1.5 else "**not met**"
        goal = "≤ 1.5×" if large >= 100_000 and small <= 1_000 else ""
        lines.append(f"| P2 server CPU per VM mutation at {_k(large)} / at {_k(small)} VMs | {goal} | {shown} "
                     f"| — | — | {verdict if goal else ''} |")
    return lines


def render(figures: Figures, machine: dict[str, Any], args: argparse.Namespace, sizes: tuple[int, ...],
           elapsed: float) -> str:
    """The whole report: how it was run, the table, notes, problems."""
    lines = [
        f"machine: {machine['nproc']} cores, {machine['cpu_model']}, Python {machine['python']}, "
        f"Linux {machine['kernel']}",
        f"run: {args.rounds} interleaved round(s) per cell, {args.seconds:g} s measured per cell, "
        f"sizes {', '.join(_k(n) for n in sizes) or 'none'}; {elapsed:.0f} s in all".replace("; nan s in all", ""),
        "figures: median of the rounds (min–max); server CPU from /proc; P2 and P1 at 16 clients, P3 at 1",
        *([f"load average (1 min) at the start {machine['load'][0]}, at the end {machine['load'][-1]}"]
          if machine.get("load") else []),
        "",
        *table(figures, tuple(sizes), tuple(args.watchers), getattr(args, "measures", None)),
    ]
    notes = [f"{key}: {text}" for key, texts in figures.notes.items() for text in texts]
    if notes:
        lines += ["", "notes:", *(f"  {n}" for n in notes)]
    if figures.problems:
        lines += ["", "problems:", *(f"  {p}" for p in figures.problems)]
    return "\n".join(lines)

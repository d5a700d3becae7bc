"""SXP and JSON output for ``--long``/``--json`` listings."""

from __future__ import annotations

import datetime as dt
import json
import xmlrpc.client

from .. import sxp
from .vms import as_datetime

WIDTH = 72


def pretty(node: sxp.Sxp, indent: int = 0) -> str:
    """xend's ``-l`` layout: a list that fits on a line stays on it, else one child per line."""
    flat = sxp.dumps(node)
    if isinstance(node, str) or indent + len(flat) <= WIDTH or not node:
        return " " * indent + flat
    head, *rest = node
    lines = [" " * indent + "(" + sxp.dumps(head)]
    lines += [pretty(child, indent + 4) for child in rest]
    lines[-1] += ")"
    return "\n".join(lines)


def jsonable(value):
    """XML-RPC values as JSON: dateTimes become ISO 8601 UTC strings."""
    if isinstance(value, xmlrpc.client.DateTime):
        return as_datetime(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps_json(value) -> str:
    return json.dumps(jsonable(value), indent=2, sort_keys=True)

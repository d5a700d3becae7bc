"""XAPI's JSON-RPC on ``POST /jsonrpc``: the same dispatcher, sessions and roles as XML-RPC.

A request is ``{"method", "params", "id"}``; ``"jsonrpc": "2.0"`` makes it version 2, no
``jsonrpc`` member version 1, and the reply has the request's version (docs/api/jsonrpc.md):

- 1.0: ``{"result", "error", "id"}``, ``error`` the Xen-API error list ``[code, params...]``;
- 2.0: ``{"jsonrpc", "result" | "error", "id"}``, ``error`` ``{"code": 1, "message": code, "data": params}``.

Values are the Xen-API's in JSON: ints and floats are numbers, bools booleans, datetimes the
XML-RPC text (``20250319T04:16:24Z``), refs and enums strings, sets arrays, maps objects. Records
are encoded once as XML-RPC text for every reader (xend_ext.encode); here that text is read back
and each field given its declared type. A request that is not JSON-RPC is HTTP 400.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from . import types as T
from .wire import Encoded, EncodedParts, WireFloat, WireInt, encode_value, format_datetime, loads_value

if TYPE_CHECKING:
    from .datamodel import Message, Registry
    from .dispatch import Dispatcher
    from .http import Request, Response

CONTENT_TYPE = "application/json"
ERROR_CODE = 1  # XAPI's: the error's code is never used, and some clients take 0 for "no error"
RECORDS = ("get_all_records", "get_all_records_where")
PARSE_IN_THREAD = 256 << 10  # bodies larger than this are parsed off the loop (as server.py does)


class Malformed(ValueError):
    """The body is not a JSON-RPC request we answer: HTTP 400 with this sentence."""


def handle(dispatcher: Dispatcher, request: Request) -> Response | Awaitable[Response]:
    if request.method != "POST":
        return 405, "text/plain", b"JSON-RPC needs POST\n"
    if len(request.body) > PARSE_IN_THREAD:
        return _handle_large(dispatcher, request.body)
    try:
        call = parse(request.body)
    except Malformed as exc:
        return _malformed(exc)
    return _answer(dispatcher, call)


def _malformed(exc: Malformed) -> Response:
    return 400, "text/plain; charset=utf-8", f"not a JSON-RPC request: {exc}\n".encode()


def _answer(dispatcher: Dispatcher, call: tuple[int, str, tuple, Any]) -> Response | Awaitable[Response]:
    version, method, params, ident = call
    result = dispatcher.call(method, params)
    if inspect.isawaitable(result):
        return _later(dispatcher, result, version, method, ident)
    return _reply(dispatcher, result, version, method, ident)


async def _later(dispatcher: Dispatcher, pending: Awaitable, version: int, method: str, ident: Any) -> Response:
    return _reply(dispatcher, await pending, version, method, ident)


async def _handle_large(dispatcher: Dispatcher, body: bytes) -> Response:
    """Big bodies are parsed off the loop, as the XML-RPC ones are, so other clients are not held up."""
    try:
        call = await asyncio.get_running_loop().run_in_executor(None, parse, body)
    except Malformed as exc:
        return _malformed(exc)
    answer = _answer(dispatcher, call)
    return (await answer) if inspect.isawaitable(answer) else answer


def parse(body: bytes) -> tuple[int, str, tuple, Any]:
    """(version, method, params, id) of a request; numbers keep the text they were sent as."""
    try:
        call = json.loads(body, parse_int=WireInt, parse_float=WireFloat)
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"bad JSON ({exc})") from None
    if not isinstance(call, dict):
        raise Malformed("the body must be one JSON object")
    version = {None: 1, "2.0": 2}.get(call.get("jsonrpc", None), 0) if "jsonrpc" in call else 1
    if not version:
        raise Malformed('"jsonrpc" must be "2.0" (or absent for version 1.0)')
    method = call.get("method")
    if not isinstance(method, str):
        raise Malformed('"method" must be a string')
    params = call.get("params")
    if params is None and version == 2:
        params = []
    elif isinstance(params, dict) and version == 2:
        params = [params]
    if not isinstance(params, list):
        raise Malformed('"params" must be an array')
    ident = call.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise Malformed('"id" must be a string or an integer (notifications are not answered)')
    return version, method, tuple(params), ident


def _reply(dispatcher: Dispatcher, result: tuple[Any, bool], version: int, method: str, ident: Any) -> Response:
    reply, raw = result
    ident = int(ident) if isinstance(ident, int) else ident
    if not raw and reply["Status"] != "Success":
        code, *params = reply["ErrorDescription"]
        if version == 1:
            body = {"result": None, "error": [code, *params], "id": ident}
        else:
            body = {"jsonrpc": "2.0", "error": {"code": ERROR_CODE, "message": code, "data": params}, "id": ident}
    else:
        value = _json_value(dispatcher.registry, method, reply if raw else reply["Value"])
        body = {"result": value, "error": None, "id": ident} if version == 1 else \
            {"jsonrpc": "2.0", "result": value, "id": ident}
    return 200, CONTENT_TYPE, json.dumps(body, default=_default, separators=(",", ":")).encode()


def _default(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return format_datetime(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _json_value(registry: Registry, method: str, value: Any) -> Any:
    """The reply's value with Xen-API types: records read back from their XML-RPC text."""
    found = registry.methods.get(method)
    if found is None:  # Async.* (a task ref) or system.*
        return value
    cls, msg = found
    if _has_encoded(value):
        value = loads_value(encode_value(value))
    if msg.name == "get_record":
        return _record(registry, cls.name, value)
    if msg.name in RECORDS:
        return {ref: _record(registry, cls.name, rec) for ref, rec in value.items()}
    if cls.name == "event" and msg.name in ("from", "next"):
        return _events(registry, value)
    return _typed(msg, value)


def _has_encoded(value: Any) -> bool:
    if isinstance(value, (Encoded, EncodedParts)):
        return True
    if type(value) is dict:
        return any(isinstance(v, (Encoded, EncodedParts)) for v in value.values())
    return False


def _typed(msg: Message, value: Any) -> Any:
    return as_type(msg.result, value) if msg.result is not None else value


def _events(registry: Registry, value: Any) -> Any:
    events = value["events"] if isinstance(value, dict) else value
    for event in events:
        if isinstance(event.get("snapshot"), dict):
            event["snapshot"] = _record(registry, event.get("class", ""), event["snapshot"])
        if isinstance(event.get("id"), str) and event["id"].isdigit():
            event["id"] = int(event["id"])
    return value


def _record(registry: Registry, cname: str, record: dict) -> dict:
    cls = registry.lower.get(cname.lower())
    if cls is None:
        return record
    return {name: as_type(cls.fields[name].type, v) if name in cls.fields else v for name, v in record.items()}


def as_type(kind: T.Type, value: Any) -> Any:
    """A value read back from XML-RPC (ints as decimal strings) as JSON-RPC carries it."""
    if isinstance(kind, T.IntType) and isinstance(value, str):
        return int(value)
    if isinstance(kind, T.FloatType) and isinstance(value, str):
        return float(value)
    if isinstance(kind, T.SetType) and isinstance(value, list):
        return [as_type(kind.item, v) for v in value]
    if isinstance(kind, T.MapType) and isinstance(value, dict):
        return {k: as_type(kind.value, v) for k, v in value.items()}
    if isinstance(kind, T.IntType) and isinstance(value, int):
        return int(value)
    return value


"""The Xen-API wire: the reply envelope, value marshalling and hardened XML-RPC parsing.

Every reply is a struct with ``Status``; API-level errors never become XML-RPC faults, because
the official clients only understand ``ErrorDescription``. Integers travel as decimal strings
(Xen-API ints are 64-bit, XML-RPC's ``<int>`` is 32-bit).
"""

from __future__ import annotations

import datetime as _dt
import xmlrpc.client
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

NULL_REF = "OpaqueRef:NULL"
REF_PREFIX = "OpaqueRef:"


class XenAPIError(Exception):
    """An API-level failure: a code and its string parameters, sent as ``ErrorDescription``."""

    def __init__(self, code: str, *params: Any) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]

    def __str__(self) -> str:
        return " ".join([self.code, *self.params])


class BadRequest(Exception):
    """The request is not well-formed XML-RPC: answered with HTTP 400, never a crash."""


def success(value: Any) -> dict:
    return {"Status": "Success", "Value": "" if value is None else to_wire(value)}


def failure(description: list[str]) -> dict:
    return {"Status": "Failure", "ErrorDescription": [str(p) for p in description]}


def format_datetime(value: _dt.datetime) -> str:
    """XAPI's dateTime form: no dashes, always UTC with a trailing Z."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.timezone.utc)
    return value.strftime("%Y%m%dT%H:%M:%SZ")


def to_wire(value: Any) -> Any:
    """Python value -> XML-RPC value following the Xen-API rules (ints and map keys as strings)."""
    if isinstance(value, str) or isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_wire(v) for v in value]
    if isinstance(value, _dt.datetime):
        return xmlrpc.client.DateTime(format_datetime(value))
    if value is None:
        return ""
    raise TypeError(f"cannot marshal {type(value).__name__}")


def dumps_response(reply: dict) -> bytes:
    return xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=True).encode("utf-8")


def dumps_raw(value: Any) -> bytes:
    """For the few calls (system.*) whose reply is not wrapped in the Xen-API envelope."""
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8")


class _DepthLimitedUnmarshaller(xmlrpc.client.Unmarshaller):
    """Refuses deep nesting before it costs memory: a request nested 10,000 arrays deep is hostile."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(use_datetime=False, use_builtin_types=True)
        self._depth = 0
        self._max_depth = max_depth

    def start(self, tag, attrs):  # noqa: ANN001 - expat callback signature
        self._depth += 1
        if self._depth > self._max_depth:
            raise BadRequest(f"XML nesting deeper than {self._max_depth} levels")
        super().start(tag, attrs)

    def end(self, tag):  # noqa: ANN001
        self._depth -= 1
        return super().end(tag)


def loads_request(body: bytes, max_depth: int = 64) -> tuple[str, tuple]:
    """Parse an XML-RPC methodCall with DTDs, entities and external references forbidden."""
    unmarshaller = _DepthLimitedUnmarshaller(max_depth)
    parser = DefusedExpatParser(unmarshaller, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
        parser.close()
        params = unmarshaller.close()
    except BadRequest:
        raise
    except DefusedXmlException as exc:
        raise BadRequest(f"forbidden XML construct: {exc}") from None
    except (xmlrpc.client.ResponseError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise BadRequest(f"malformed XML-RPC request: {exc}") from None
    except Exception as exc:  # expat.ExpatError and friends
        raise BadRequest(f"malformed XML: {exc}") from None
    method = unmarshaller.getmethodname()
    if not method:
        raise BadRequest("not an XML-RPC methodCall (no methodName)")
    return method, tuple(params)


def strip_ref(value: str) -> str:
    """``OpaqueRef:<uuid>`` and a bare uuid name the same object."""
    return value[len(REF_PREFIX):] if value.startswith(REF_PREFIX) else value

"""The Xen-API wire: the reply envelope, value marshalling and hardened XML-RPC parsing.

Every reply is a struct with ``Status``; API-level errors never become XML-RPC faults, because
the official clients only understand ``ErrorDescription``. Integers travel as decimal strings
(Xen-API ints are 64-bit, XML-RPC's ``<int>`` is 32-bit), and every string is sent typed,
``<value><string>…</string></value>``: Go's kolo/xmlrpc and Java's aXMLRPC refuse a bare value.

Liberal in what it reads (docs/api/wire.md): ``<int>``/``<i8>``/``<double>`` keep the text they were
sent with (:class:`WireInt`, :class:`WireFloat`), so a string parameter given as a number reads
as that text (Perl sends ``"1.0"`` as a double and ``"007"`` as an int); ``<nil/>`` and Apache's
``<ex:nil/>`` read as None, the empty value of the parameter's type (xend_ext.types).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
from collections.abc import Callable, Iterable
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


class WireInt(int):
    """An ``<int>``/``<i8>`` as sent: a number that remembers its text ("007")."""

    def __new__(cls, text: str) -> WireInt:
        self = super().__new__(cls, text)
        self.text = text
        return self


class WireFloat(float):
    """A ``<double>`` as sent: a number that remembers its text ("1.0", "6")."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> WireFloat:
        self = super().__new__(cls, text)
        self.text = text
        return self


def number_text(value: int | float) -> str:
    """The text a number was sent as (a string parameter given as a number means that text)."""
    return getattr(value, "text", None) or str(value)


class BadRequest(Exception):
    """The request is not well-formed XML-RPC: answered with HTTP 400, never a crash."""


def success(value: Any) -> dict:
    return {"Status": "Success", "Value": "" if value is None else value}


def failure(description: list[str]) -> dict:
    return {"Status": "Failure", "ErrorDescription": [str(p) for p in description]}


def format_datetime(value: _dt.datetime) -> str:
    """XAPI's dateTime form: no dashes, always UTC with a trailing Z."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC)
    return value.strftime("%Y%m%dT%H:%M:%SZ")


def escape(text: str) -> str:
    """Text as XML character data."""
    if "&" in text or "<" in text or ">" in text:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


class Encoded(bytes):
    """The XML-RPC text of one value, encoded already (UTF-8): the encoder writes it out as it is.

    Records are encoded once per version (xend_ext.encode) and event replies once per generation
    (xend_ext.events); a reply holding one is written without looking inside it again, and
    joined as bytes: a big reply is not built as text and then copied into bytes.
    """

    __slots__ = ()


class EncodedParts(list):
    """The XML-RPC text of one value in pieces (bytes), written out one after another: a map of
    thousands of encoded records is joined once, with the rest of the reply."""

    __slots__ = ()


_ENCODED = (Encoded, EncodedParts)


def _dump(value: Any, out: list[str]) -> None:
    """One pass from Python values to XML-RPC text, applying the Xen-API rules on the way.

    Strings go out as ``<string>`` (typed: strict clients refuse bare values), ints as decimal
    strings, map keys as strings. Everything is appended to ``out`` (one join at the
    end); strings inside structs and arrays, the common case, are written without a call.
    """
    kind = type(value)
    if kind is str:
        out.append("<value><string>" + escape(value) + "</string></value>")
    elif kind is Encoded:
        out.append(value)
    elif kind is EncodedParts:
        out.extend(value)
    elif kind is dict:
        out.append("<value><struct>")
        _members(value.items(), out)
        out.append("</struct></value>")
    elif kind is list or kind is tuple:
        append = out.append
        append("<value><array><data>")
        for item in value:
            if type(item) is str:
                append("<value><string>" + escape(item) + "</string></value>")
            else:
                _dump(item, out)
        append("</data></array></value>")
    elif kind is bool:
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif kind is int:
        out.append(f"<value><string>{value:d}</string></value>")
    elif kind is float:
        out.append("<value><double>" + repr(value) + "</double></value>")
    elif isinstance(value, _dt.datetime):
        out.append("<value><dateTime.iso8601>" + format_datetime(value) + "</dateTime.iso8601></value>")
    elif value is None:
        out.append("<value><string></string></value>")
    elif isinstance(value, (set, frozenset)):
        _dump(list(value), out)
    elif isinstance(value, int):  # int subclasses
        out.append(f"<value><string>{value:d}</string></value>")
    elif isinstance(value, str):
        _dump(str(value), out)
    else:
        raise TypeError(f"cannot marshal {type(value).__name__}")


def _members(items: Iterable[tuple[Any, Any]], out: list[str]) -> None:
    append = out.append
    for key, item in items:
        name = escape(key if type(key) is str else str(key))
        if type(item) is str:
            append("<member><name>" + name + "</name><value><string>" + escape(item) + "</string></value></member>")
        else:
            append("<member><name>" + name + "</name>")
            _dump(item, out)
            append("</member>")


def dump_value(value: Any) -> str:
    """The XML-RPC text of one value (a task's ``result`` holds this, as in XAPI). A ref or other
    string is written as XAPI writes it there, ``<value>OpaqueRef:…</value>``: clients strip the tags."""
    if type(value) is str:
        return "<value>" + escape(value) + "</value>"
    out: list = []
    _dump(value, out)
    return _joined(out).decode("utf-8")


def dump_members(items: Iterable[tuple[Any, Any]]) -> str:
    """The ``<member>`` elements of a struct with these (name, value) pairs, without the struct."""
    out: list[str] = []
    _members(items, out)
    return "".join(out)


def _joined(out: list, encoded: bool = False) -> bytes:
    """The UTF-8 text of these parts: text (str) and parts encoded already (bytes); ``encoded``
    says that some are bytes (raising and catching the TypeError costs more than a small reply)."""
    if not encoded:
        try:
            return "".join(out).encode("utf-8")
        except TypeError:  # an Encoded part inside: join as bytes
            pass
    return b"".join([p.encode("utf-8") if type(p) is str else p for p in out])


def encode_value(value: Any) -> Encoded:
    """``value`` as Encoded text, to be written out as it is wherever it is used again."""
    out: list = []
    _dump(value, out)
    return Encoded(_joined(out, type(value) in _ENCODED))


_HEAD = "<?xml version='1.0'?>\n<methodResponse><params><param>"
_TAIL = "</param></params></methodResponse>\n"


_OK_HEAD = (_HEAD + "<value><struct><member><name>Status</name><value><string>Success</string></value></member>"
            "<member><name>Value</name>").encode()
_OK_TAIL = ("</member></struct></value>" + _TAIL).encode()


class _LastReply:
    """The reply made for the last Encoded value: the watchers one change wakes share one value
    (xend_ext.events) and so get one reply, not a copy each. One tuple, replaced whole: a reader
    in another thread never sees a value with another value's reply."""

    pair: tuple[Encoded | None, bytes] = (None, b"")


SHARED_REPLY = 64 << 10  # larger replies are not kept for the next caller


def dumps_response(reply: Any) -> bytes:
    if type(reply) is dict and len(reply) == 2 and type(value := reply.get("Value")) is Encoded \
            and reply.get("Status") == "Success":
        last = _LastReply.pair
        if value is last[0]:
            return last[1]
        text = b"".join((_OK_HEAD, value, _OK_TAIL))  # a record or an event.from answer, as it is
        if len(value) <= SHARED_REPLY:
            _LastReply.pair = (value, text)
        return text
    out = [_HEAD]
    _dump(reply, out)
    out.append(_TAIL)
    # the replies that are a record or an event.from answer are known to hold encoded parts
    return _joined(out, type(reply) is dict and type(reply.get("Value")) in _ENCODED)



class _RequestTarget:
    """Builds the params of a methodCall from expat events, refusing deep nesting as it goes.

    Our own small target rather than xmlrpc.client.Unmarshaller: the depth check costs no extra
    layer of calls, and the types are exactly XML-RPC's (an untyped ``<value>`` is a string).
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.values: list[Any] = []
        self.marks: list[int] = []
        self.text: list[str] = []
        self.typed = False  # a typed element inside the current <value> produced the value
        self.method: str | None = None

    def xml(self, encoding: str | None, standalone: Any) -> None:
        """The XML declaration: nothing to do (expat decodes the text)."""

    def start(self, tag: str, attrs: Any) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise BadRequest(f"XML nesting deeper than {self.max_depth} levels")
        if tag == "value":
            self.typed = False
        elif tag == "array" or tag == "struct":
            self.marks.append(len(self.values))
        elif tag not in _KNOWN:
            raise BadRequest(f"unknown XML-RPC element <{tag[:40]}>")
        self.text = []

    def data(self, text: str) -> None:
        self.text.append(text)

    def end(self, tag: str) -> None:
        self.depth -= 1
        handler = _END.get(tag)
        if handler is not None:
            handler(self, "".join(self.text))
        self.text = []

    def _typed(self, value: Any) -> None:
        self.values.append(value)
        self.typed = True

    def _value(self, text: str) -> None:
        if not self.typed:
            self.values.append(text)
        self.typed = True

    def _int(self, text: str) -> None:
        try:
            self._typed(WireInt(text.strip()))
        except ValueError:
            raise BadRequest(f"bad integer {text[:40]!r}") from None

    def _double(self, text: str) -> None:
        try:
            self._typed(WireFloat(text.strip()))
        except ValueError:
            raise BadRequest(f"bad double {text[:40]!r}") from None

    def _boolean(self, text: str) -> None:
        if text.strip() not in ("0", "1"):
            raise BadRequest(f"bad boolean {text[:40]!r}")
        self._typed(text.strip() == "1")

    def _datetime(self, text: str) -> None:
        text = text.strip()
        for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S"):
            try:
                self._typed(_dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.UTC))
                return
            except ValueError:
                continue
        raise BadRequest(f"bad dateTime {text[:40]!r}")

    def _base64(self, text: str) -> None:
        try:
            self._typed(base64.b64decode(text.encode("ascii")))
        except (binascii.Error, UnicodeEncodeError):
            raise BadRequest("bad base64") from None

    def _collect(self) -> list[Any]:
        if not self.marks:
            raise BadRequest("unbalanced array or struct")
        mark = self.marks.pop()
        items = self.values[mark:]
        del self.values[mark:]
        return items

    def _array(self, text: str) -> None:
        self._typed(self._collect())

    def _struct(self, text: str) -> None:
        items = self._collect()
        if len(items) % 2:
            raise BadRequest("a struct member without a name or a value")
        self._typed(dict(zip(items[::2], items[1::2], strict=True)))

    def _name(self, text: str) -> None:
        if not self.marks:
            raise BadRequest("<name> outside a struct")
        self.values.append(text)  # paired with the member's value by _struct

    def _method(self, text: str) -> None:
        self.method = text.strip()


_END: dict[str, Callable[[_RequestTarget, str], None]] = {
    "value": _RequestTarget._value,
    "string": _RequestTarget._typed,
    "int": _RequestTarget._int,
    "i4": _RequestTarget._int,
    "i8": _RequestTarget._int,
    "double": _RequestTarget._double,
    "boolean": _RequestTarget._boolean,
    "dateTime.iso8601": _RequestTarget._datetime,
    "base64": _RequestTarget._base64,
    "nil": lambda self, text: self._typed(None),
    # Apache XML-RPC's extensions (namespace http://ws.apache.org/xmlrpc/namespaces/extensions)
    "ex:nil": lambda self, text: self._typed(None),
    "ex:i1": _RequestTarget._int,
    "ex:i2": _RequestTarget._int,
    "ex:i8": _RequestTarget._int,
    "ex:float": _RequestTarget._double,
    "array": _RequestTarget._array,
    "struct": _RequestTarget._struct,
    "name": _RequestTarget._name,
    "methodName": _RequestTarget._method,
}
_KNOWN = frozenset(_END) | {"methodCall", "params", "param", "data", "member"}


# The common request, as xmlrpc.client (and so every official client) writes it: scalars and flat
# arrays of scalars, no entity, no comment. Such a body is read by the patterns below at a fifth of
# expat's cost (its Python callbacks per element were most of a small call's parse); whatever else
# (structs, nesting, entities, other encodings, anything malformed) goes to expat, so the patterns
# only ever accept text that expat reads to the same values.
_WS = "[ \t\n\r]*"
_TEXT = "[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"  # plain XML text: no markup, entity or CR


def _call(params: str) -> re.Pattern:
    """A whole methodCall whose params (group 4) match ``params``; group 3 is the method."""
    return re.compile(
        "(?:<\\?xml version=(['\"])1\\.0\\1(?: encoding=(['\"])(?i:utf-8)\\2)?\\?>)?" + _WS
        + "<methodCall>" + _WS + "<methodName>" + _WS + "([A-Za-z0-9_.]+)" + _WS + "</methodName>" + _WS
        + "(?:<params>" + params + "</params>" + _WS + ")?</methodCall>" + _WS + "\\Z", re.S)


_CALL = _call("(.*)")
_VALUE = re.compile(
    _WS + "<value>(?:<string>(?P<s>" + _TEXT + ")</string>|(?P<u>" + _TEXT + ")(?=</value>)"
    "|<(?P<it>int|i4|i8)>(?P<i>[-+]?[0-9]{1,19})</(?P=it)>"
    "|<double>(?P<d>[-+]?[0-9]{1,20}(?:\\.[0-9]{1,20})?)</double>"
    "|<boolean>(?P<b>[01])</boolean>|(?P<n><nil/>)|(?P<a><array><data>))")
_VALUE_END = re.compile("</value>")
_ARRAY_END = re.compile(_WS + "</data></array></value>")
_PARAM = re.compile(_WS + "<param>")
_PARAM_END = re.compile(_WS + "</param>")
_FAST_DEPTH = 8  # methodCall, params, param, value, array, data, value, string
# the commonest of all: every param a string (refs, names), checked by one pass over the whole call
_STRING_PARAM = "<param>" + _WS + "<value><string>" + _TEXT + "</string></value>" + _WS + "</param>" + _WS
_STRINGS_CALL = _call("(" + _WS + "(?:" + _STRING_PARAM + ")*)")
_STRING_START = "<string>"
_STRING_END = "</string>"


def _fast_value(text: str, pos: int, nested: bool) -> tuple[Any, int] | None:
    """One ``<value>`` at ``pos`` (after whitespace) and the position after it, or None."""
    m = _VALUE.match(text, pos)
    if m is None:
        return None
    end = m.end()
    if (s := m.group("s")) is not None:
        value: Any = s
    elif (u := m.group("u")) is not None:
        value = u
    elif (i := m.group("i")) is not None:
        value = int(i)
    elif (d := m.group("d")) is not None:
        value = float(d)
    elif (b := m.group("b")) is not None:
        value = b == "1"
    elif m.group("n") is not None:
        value = None
    else:  # an array: its values, then its end
        if nested:
            return None
        value = []
        while (item := _fast_value(text, end, True)) is not None:
            value.append(item[0])
            end = item[1]
        close = _ARRAY_END.match(text, end)
        return None if close is None else (value, close.end())
    close = _VALUE_END.match(text, end)
    return None if close is None else (value, close.end())


def fast_request(body: bytes) -> tuple[str, tuple] | None:
    """The method and params of a request of the common form, or None for expat to read."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    call = _STRINGS_CALL.match(text)
    if call is not None:  # the text between <string> and </string>, checked to hold no markup
        inner = call.group(4)
        return call.group(3), tuple([p[:p.index(_STRING_END)] for p in inner.split(_STRING_START)[1:]] if inner
                                    else ())
    call = _CALL.match(text)
    if call is None:
        return None
    inner = call.group(4)
    params = []
    if inner:
        pos, end = 0, len(inner)
        while pos < end:
            start = _PARAM.match(inner, pos)
            if start is None:
                if inner[pos:].strip(" \t\n\r"):
                    return None
                break
            found = _fast_value(inner, start.end(), False)
            if found is None:
                return None
            close = _PARAM_END.match(inner, found[1])
            if close is None:
                return None
            params.append(found[0])
            pos = close.end()
    return call.group(3), tuple(params)


def loads_request(body: bytes, max_depth: int = 64, fast: bool = True) -> tuple[str, tuple]:
    """Parse an XML-RPC methodCall with DTDs, entities and external references forbidden.

    ``fast``: read the common form without expat where it can (the same values; False is for the
    tests that compare the two)."""
    if fast and max_depth >= _FAST_DEPTH:
        fast = fast_request(body)
        if fast is not None:
            return fast
    target = _RequestTarget(max_depth)
    parser = DefusedExpatParser(target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
        parser.close()
    except BadRequest:
        raise
    except DefusedXmlException as exc:
        raise BadRequest(f"forbidden XML construct: {exc}") from None
    except Exception as exc:  # expat.ExpatError and friends
        raise BadRequest(f"malformed XML: {exc}") from None
    if not target.method:
        raise BadRequest("not an XML-RPC methodCall (no methodName)")
    if target.marks:
        raise BadRequest("unbalanced array or struct")
    return target.method, tuple(target.values)


def loads_value(text: bytes) -> Any:
    """One value read back from the XML-RPC text this module wrote (JSON-RPC replies reuse the
    records encoded once for XML-RPC): strings stay strings, as they were sent."""
    method, (value,) = loads_request(b"<methodCall><methodName>v</methodName><params><param>" + text
                                     + b"</param></params></methodCall>", max_depth=1 << 10)
    return value


def strip_ref(value: str) -> str:
    """``OpaqueRef:<uuid>`` and a bare uuid name the same object."""
    return value[len(REF_PREFIX):] if value.startswith(REF_PREFIX) else value

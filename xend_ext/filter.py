"""XAPI's filter language for ``get_all_records_where``.

    expr  := term ("or" term)*
    term  := factor ("and" factor)*
    factor:= "not" factor | "(" expr ")" | "true" | "false" | value "=" value
    value := "literal" | field "name"

Values compare as the text XAPI's database would hold (ints in decimal, bools true/false).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .wire import XenAPIError

if TYPE_CHECKING:
    from .datamodel import XenAPIClass

Reader = Callable[[str], Callable[[Any], "str | None"]]  # field name -> (row -> the field's text)
Node = tuple  # ("or"|"and", [nodes]) | ("not", node) | ("const", bool) | ("eq", value, value)

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z_]+)|(?P<sym>[=()]))')
_REST_BLANK = re.compile(r"\s*\Z")
MAX_EXPR = 10_000
MAX_DEPTH = 64


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(expr):
        if _REST_BLANK.match(expr, pos):
            break
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"unexpected character at {pos}: {expr[pos:pos + 10]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group("str")[1:-1])))
        elif m.group("word") is not None:
            out.append(("word", m.group("word").lower()))
        else:
            out.append(("sym", m.group("sym")))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], cls: XenAPIClass) -> None:
        self.tokens = tokens
        self.pos = 0
        self.cls = cls
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, text: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (text is not None and tok[1] != text):
            want = text or kind
            raise ValueError(f"expected {want} at token {self.pos + 1}, found {tok[1] if tok else 'end'}")
        self.pos += 1
        return tok[1]

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ValueError("expression nested too deeply")
        parts = [self.term()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            parts.append(self.term())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else ("or", parts)

    def term(self) -> Node:
        parts = [self.factor()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def factor(self) -> Node:
        tok = self.peek()
        if tok == ("word", "not"):
            self.pos += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ValueError("expression nested too deeply")
            inner = self.factor()
            self.depth -= 1
            return ("not", inner)
        if tok == ("sym", "("):
            self.pos += 1
            inner = self.expr()
            self.take("sym", ")")
            return inner
        if tok in (("word", "true"), ("word", "false")):
            self.pos += 1
            return ("const", tok[1] == "true")
        left = self.value()
        self.take("sym", "=")
        return ("eq", left, self.value())

    def value(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is not None and tok[0] == "str":
            self.pos += 1
            return ("lit", tok[1])
        self.take("word", "field")
        name = self.take("str")
        if name not in self.cls.fields:
            raise ValueError(f"{self.cls.name} has no field {name!r}")
        return ("field", name)


def _texts(name: str) -> Callable[[Any], str | None]:
    """The default reader: rows are mappings of field name to text."""
    return lambda row: row.get(name)


class Filter:
    """A parsed expression, built once per call into one predicate over rows.

    ``fixed`` holds the ``field = "literal"`` equalities every matching row satisfies (those joined
    by ``and`` at the top): a caller may look such a field up in an index and test only the rows
    found there.
    """

    def __init__(self, tree: Node, read: Reader) -> None:
        self.fixed: dict[str, str] = {}
        self._conjuncts(tree)
        self.test: Callable[[Any], bool] = _build(tree, read)

    def _conjuncts(self, node: Node) -> None:
        if node[0] == "and":
            for part in node[1]:
                self._conjuncts(part)
        elif node[0] == "eq":
            (kind_a, a), (kind_b, b) = node[1], node[2]
            if {kind_a, kind_b} == {"field", "lit"}:
                name, text = (a, b) if kind_a == "field" else (b, a)
                self.fixed.setdefault(name, text)


def _build(node: Node, read: Reader) -> Callable[[Any], bool]:
    kind = node[0]
    if kind == "const":
        value = node[1]
        return lambda row: value
    if kind == "not":
        inner = _build(node[1], read)
        return lambda row: not inner(row)
    if kind in ("and", "or"):
        parts = [_build(n, read) for n in node[1]]
        combine = all if kind == "and" else any
        return lambda row: combine(p(row) for p in parts)
    (kind_a, a), (kind_b, b) = node[1], node[2]
    if kind_a == "lit" and kind_b == "lit":
        return lambda row: a == b
    if kind_a == "lit" or kind_b == "lit":
        get, text = (read(a), b) if kind_a == "field" else (read(b), a)
        return lambda row: get(row) == text
    get_a, get_b = read(a), read(b)
    return lambda row: get_a(row) == get_b(row)


def compile_filter(expr: str, cls: XenAPIClass, read: Reader = _texts) -> Filter:
    """Parse once; ``read(name)`` gives how to take a field's text from a row (by default rows are
    mappings of texts). A bad expression is ``INVALID_VALUE [expr, why]``."""
    try:
        if len(expr) > MAX_EXPR:
            raise ValueError(f"expression longer than {MAX_EXPR} characters")
        parser = _Parser(_tokens(expr), cls)
        tree = parser.expr()
        if parser.peek() is not None:
            raise ValueError(f"unexpected {parser.peek()[1]!r} after a complete expression")
    except ValueError as exc:
        raise XenAPIError("INVALID_VALUE", expr, str(exc)) from None
    return Filter(tree, read)

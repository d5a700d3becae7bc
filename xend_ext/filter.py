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
from typing import TYPE_CHECKING

from .wire import XenAPIError

if TYPE_CHECKING:
    from .datamodel import XenAPIClass

Lookup = Callable[[str], "str | None"]
Predicate = Callable[[Lookup], bool]

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

    def expr(self) -> Predicate:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ValueError("expression nested too deeply")
        parts = [self.term()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            parts.append(self.term())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else (lambda get, ps=parts: any(p(get) for p in ps))

    def term(self) -> Predicate:
        parts = [self.factor()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda get, ps=parts: all(p(get) for p in ps))

    def factor(self) -> Predicate:
        tok = self.peek()
        if tok == ("word", "not"):
            self.pos += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ValueError("expression nested too deeply")
            inner = self.factor()
            self.depth -= 1
            return lambda get: not inner(get)
        if tok == ("sym", "("):
            self.pos += 1
            inner = self.expr()
            self.take("sym", ")")
            return inner
        if tok == ("word", "true"):
            self.pos += 1
            return lambda get: True
        if tok == ("word", "false"):
            self.pos += 1
            return lambda get: False
        left = self.value()
        self.take("sym", "=")
        right = self.value()
        return lambda get: left(get) == right(get)

    def value(self) -> Callable[[Lookup], str | None]:
        tok = self.peek()
        if tok is not None and tok[0] == "str":
            self.pos += 1
            text = tok[1]
            return lambda get: text
        self.take("word", "field")
        name = self.take("str")
        if name not in self.cls.fields:
            raise ValueError(f"{self.cls.name} has no field {name!r}")
        return lambda get: get(name)


def compile_filter(expr: str, cls: XenAPIClass) -> Predicate:
    """Parse once, then test each record; a bad expression is ``INVALID_VALUE [expr, why]``."""
    try:
        if len(expr) > MAX_EXPR:
            raise ValueError(f"expression longer than {MAX_EXPR} characters")
        parser = _Parser(_tokens(expr), cls)
        predicate = parser.expr()
        if parser.peek() is not None:
            raise ValueError(f"unexpected {parser.peek()[1]!r} after a complete expression")
        return predicate
    except ValueError as exc:
        raise XenAPIError("INVALID_VALUE", expr, str(exc)) from None

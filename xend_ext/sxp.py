"""SXP, the S-expression syntax xend used for configs, exports and our journal records.

Syntax: ``(`` and ``)`` delimit lists; an atom is either a bare word (any run of
characters other than whitespace, parentheses, quotes and ``#``) or a quoted string in
``'single'`` or ``"double"`` quotes.  Inside quotes the escapes ``\\n \\t \\r \\\\ \\" \\'
\\xHH`` are understood, plus ``\\uHHHH`` and ``\\UHHHHHHHH`` so that every Python string,
lone surrogates included, can be written.  ``#`` starts a comment that runs to the end
of the line.  Atoms always read back as ``str``: SXP has no numbers, the reader of a
config decides what a value means.

:func:`dumps` always produces a single line (every line break and control character
is escaped), which is what lets the journal keep one record per line, and
``loads(dumps(v))`` returns ``v`` exactly (ints come back as their decimal string).

The reader is written for hostile input: it is iterative (nesting is capped by
``max_depth`` instead of the interpreter's recursion limit) and linear in the size of
the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "MAX_DEPTH",
    "Sxp",
    "SxpError",
    "child",
    "child_value",
    "children",
    "dumps",
    "load_all",
    "loads",
    "name",
]

Sxp: TypeAlias = str | list["Sxp"]

#: Default nesting limit of the reader (and writer): xend configs nest 3 or 4 deep.
MAX_DEPTH = 100


class SxpError(ValueError):
    """Malformed SXP; the message says where (line, column and character offset)."""

    def __init__(self, message: str, text: str | None = None, pos: int | None = None):
        if text is not None and pos is not None:
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
            message = f"{message} at line {line}, column {col} (offset {pos})"
        super().__init__(message)
        self.pos = pos


# --------------------------------------------------------------------------- writer

# Atoms made only of these characters are written bare; everything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_.:/+@%=-]+")

# Characters that must not appear raw inside a written string: the quote and the
# escape character, C0/C1 controls (which include the line breaks), the Unicode line
# and paragraph separators, the BOM and lone surrogates (not encodable as UTF-8).
_NEEDS_ESCAPE = re.compile("[\x00-\x1f\x7f-\x9f\"\\\\\u2028\u2029\ufeff\ud800-\udfff]")

_SIMPLE_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    simple = _SIMPLE_ESCAPES.get(ch)
    if simple is not None:
        return simple
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _atom(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return value
    if _NEEDS_ESCAPE.search(value) is None:
        return f'"{value}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, value) + '"'


def dumps(value: Sxp | int | Sequence, *, max_depth: int = MAX_DEPTH) -> str:
    """Write ``value`` (str, int, or nested lists/tuples of them) as one line of SXP.

    Ints are accepted for convenience and written in decimal; they read back as
    strings.  Refuses ``bool`` (``True`` would silently become ``"True"``).
    """
    if type(value) is str:
        return _atom(value)
    out: list[str] = []
    _dump(value, out, 0, max_depth)
    return "".join(out)


def _dump(value: object, out: list[str], depth: int, max_depth: int) -> None:
    if type(value) is str:
        out.append(_atom(value))
    elif isinstance(value, (list, tuple)):
        if depth >= max_depth:
            raise SxpError(f"nesting deeper than {max_depth} levels")
        out.append("(")
        first = True
        for item in value:
            if not first:
                out.append(" ")
            first = False
            if type(item) is str:
                out.append(_atom(item))
            else:
                _dump(item, out, depth + 1, max_depth)
        out.append(")")
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append(str(int(value)))
    elif isinstance(value, str):  # a str subclass: write its plain string value
        out.append(_atom(str(value)))
    else:
        raise TypeError(f"cannot write {type(value).__name__} as SXP (use str, int or list)")


# --------------------------------------------------------------------------- reader

_WS = " \t\n\r\f\v"
_TOKEN = re.compile(
    r"""
      (?P<skip>(?:[ \t\n\r\f\v]++|\#[^\n]*+)++)
    | (?P<open>\()
    | (?P<close>\))
    | "(?P<dq>[^"\\]*+(?:\\.[^"\\]*+)*+)"
    | '(?P<sq>[^'\\]*+(?:\\.[^'\\]*+)*+)'
    | (?P<bare>[^ \t\n\r\f\v()"'\#]++)
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.DOTALL)
_UNESCAPE_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unescape(body: str, text: str, start: int) -> str:
    if "\\" not in body:
        return body

    def repl(m: re.Match[str]) -> str:
        hex_digits = m.group(1) or m.group(2) or m.group(3)
        if hex_digits is not None:
            code = int(hex_digits, 16)
            if code > 0x10FFFF:
                raise SxpError("escape beyond U+10FFFF", text, start + m.start())
            return chr(code)
        simple = _UNESCAPE_SIMPLE.get(m.group(4))
        if simple is None:
            raise SxpError(f"unknown escape {m.group()!r} in string", text, start + m.start())
        return simple

    return _ESCAPE.sub(repl, body)


class _Reader:
    """Iterative tokenizer/parser over one text."""

    __slots__ = ("max_depth", "pos", "text")

    def __init__(self, text: str, max_depth: int):
        if not isinstance(text, str):
            raise TypeError(f"SXP text must be str, not {type(text).__name__}")
        self.text = text
        self.pos = 0
        self.max_depth = max_depth

    def skip(self) -> None:
        m = _TOKEN.match(self.text, self.pos)
        if m is not None and m.lastgroup == "skip":
            self.pos = m.end()

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def read(self) -> Sxp:
        """Read one expression starting at the current position."""
        text = self.text
        stack: list[list[Sxp]] = []
        opened: list[int] = []
        match = _TOKEN.match
        while True:
            m = match(text, self.pos)
            if m is None:
                if self.pos >= len(text):
                    if stack:
                        raise SxpError("unexpected end of input: unclosed '('", text, opened[-1])
                    raise SxpError("unexpected end of input: expected an expression", text, self.pos)
                ch = text[self.pos]
                what = "unterminated string" if ch in "\"'" else f"unexpected character {ch!r}"
                raise SxpError(what, text, self.pos)
            kind = m.lastgroup
            start = self.pos
            self.pos = m.end()
            if kind == "skip":
                continue
            if kind == "open":
                if len(stack) >= self.max_depth:
                    raise SxpError(f"nesting deeper than {self.max_depth} levels", text, start)
                stack.append([])
                opened.append(start)
                continue
            if kind == "close":
                if not stack:
                    raise SxpError("unexpected ')'", text, start)
                value: Sxp = stack.pop()
                opened.pop()
            elif kind == "bare":
                value = m.group("bare")
            elif kind == "dq":
                value = _unescape(m.group("dq"), text, start + 1)
            else:
                value = _unescape(m.group("sq"), text, start + 1)
            if not stack:
                return value
            stack[-1].append(value)


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> Sxp:
    """Read exactly one expression; anything but whitespace/comments after it is an error."""
    reader = _Reader(text, max_depth)
    value = reader.read()
    if not reader.at_end():
        raise SxpError("trailing data after expression", text, reader.pos)
    return value


def load_all(text: str, *, max_depth: int = MAX_DEPTH) -> list[Sxp]:
    """Read every top-level expression, as in a config file holding several of them."""
    reader = _Reader(text, max_depth)
    values: list[Sxp] = []
    while not reader.at_end():
        values.append(reader.read())
    return values


# --------------------------------------------------------------------------- helpers
# Config accessors in the style of xend: ``(pool (name p1) (cpus 2))``.


def name(sxp: Sxp) -> str | None:
    """The head of a list expression (``pool`` above), or None for an atom or ``()``."""
    if isinstance(sxp, list) and sxp and isinstance(sxp[0], str):
        return sxp[0]
    return None


def children(sxp: Sxp, elt: str | None = None) -> list[list[Sxp]]:
    """The list children after the head, optionally only those named ``elt``."""
    if not isinstance(sxp, list):
        return []
    return [c for c in sxp[1:] if isinstance(c, list) and (elt is None or (c and c[0] == elt))]


def child(sxp: Sxp, elt: str, default: list[Sxp] | None = None) -> list[Sxp] | None:
    """The first child list named ``elt``."""
    found = children(sxp, elt)
    return found[0] if found else default


def child_value(sxp: Sxp, elt: str, default: Sxp | None = None) -> Sxp | None:
    """The value of the first ``(elt value)`` child: ``child_value(pool, "cpus") == "2"``.

    A child written without a value, ``(elt)``, counts as missing.
    """
    found = child(sxp, elt)
    if found is None or len(found) < 2:
        return default
    return found[1]


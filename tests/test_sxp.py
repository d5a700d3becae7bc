"""SXP reader/writer: exact round trips, one-line output, xend config helpers, hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_ext import sxp
from xend_ext.sxp import SxpError

# Characters that have broken line-oriented or XML-oriented formats before.
SPECIAL = "\x00\x01\x1f\x7f\x85\x9f\t\n\r\x0b\x0c\u2028\u2029\ufeff\ud800\udbff\udc00\udfff\"'\\#()é😀 "

chars = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates: hypothesis never draws them
    st.sampled_from(SPECIAL),
)
atoms = st.text(chars, max_size=12)
values = st.recursive(atoms, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


# ---------------------------------------------------------------------- writer


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("abc", "abc"),
        ("OpaqueRef:5f0c-11/x_y.z+@%=", "OpaqueRef:5f0c-11/x_y.z+@%="),
        ("", '""'),
        ("a b", '"a b"'),
        ("a\nb\tc\rd", '"a\\nb\\tc\\rd"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("it's", "\"it's\""),
        ("#x", '"#x"'),
        ("(", '"("'),
        ("\x00\x7f\x85", '"\\x00\\x7f\\x85"'),
        ("\u2028\ud800", '"\\u2028\\ud800"'),
        ("é😀", '"é😀"'),
        (42, "42"),
        (-7, "-7"),
        ([], "()"),
        (["pool", ["name", "p 1"], ["cpus", 2]], '(pool (name "p 1") (cpus 2))'),
        (("create", "VM", ("a", [])), "(create VM (a ()))"),
    ],
)
def test_dumps(value: object, text: str) -> None:
    assert sxp.dumps(value) == text


@pytest.mark.parametrize("bad", [True, None, 1.5, {"a": "b"}, b"bytes", ["ok", {1}]])
def test_dumps_refuses_other_types(bad: object) -> None:
    with pytest.raises(TypeError):
        sxp.dumps(bad)


def test_dumps_refuses_excessive_nesting() -> None:
    deep: list = []
    for _ in range(sxp.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(SxpError):
        sxp.dumps(deep)


@settings(max_examples=300)
@given(values)
def test_round_trip_is_exact_and_one_line(value: sxp.Sxp) -> None:
    text = sxp.dumps(value)
    assert len(text.splitlines()) <= 1  # no \n, \r, \x85, \u2028 ... survives raw
    text.encode("utf-8")  # always encodable: surrogates are escaped
    assert sxp.loads(text) == value


@given(st.lists(values, max_size=5))
def test_load_all_reads_back_every_expression(exprs: list[sxp.Sxp]) -> None:
    text = "\n# comment\n".join(sxp.dumps(e) for e in exprs)
    assert sxp.load_all(text) == exprs


def test_ints_read_back_as_strings() -> None:
    assert sxp.loads(sxp.dumps([1, [2, -3]])) == ["1", ["2", "-3"]]


# ---------------------------------------------------------------------- reader


def test_reader_syntax() -> None:
    text = """
    # a pool, as in a config file
    (pool
        (name 'p1')            # single quotes
        (cpus "0-3")
        (sched credit) (note 'a\\x41\\u00e9\\U0001F600\\n\\t\\r\\\\\\'\\"')
        (empty) ())
    """
    assert sxp.loads(text) == [
        "pool",
        ["name", "p1"],
        ["cpus", "0-3"],
        ["sched", "credit"],
        ["note", "aAé😀\n\t\r\\'\""],
        ["empty"],
        [],
    ]


def test_bare_atoms_stop_at_delimiters() -> None:
    assert sxp.loads("(a(b)c'd'e#f\n)") == ["a", ["b"], "c", "d", "e"]
    assert sxp.loads('("#not a comment")') == ["#not a comment"]


def test_quoted_strings_may_span_lines() -> None:
    assert sxp.loads('"a\nb"') == "a\nb"


def test_load_all() -> None:
    assert sxp.load_all("") == []
    assert sxp.load_all("  # only a comment") == []
    assert sxp.load_all("(a 1) b\n(c)# end") == [["a", "1"], "b", ["c"]]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected an expression"),
        ("   # nothing", "expected an expression"),
        ("(a (b)", "unclosed '('"),
        ("a)", "trailing data"),
        (")", "unexpected ')'"),
        ("(a) (b)", "trailing data"),
        ('"abc', "unterminated string"),
        ("'abc\\'", "unterminated string"),
        ('"\\q"', "unknown escape"),
        ('"\\x4"', "unknown escape"),
        ('"\\U00110000"', "beyond U+10FFFF"),
    ],
)
def test_errors_say_what_and_where(text: str, fragment: str) -> None:
    with pytest.raises(SxpError) as info:
        sxp.loads(text)
    assert fragment in str(info.value)
    assert "line 1, column" in str(info.value)


def test_error_position_counts_lines() -> None:
    with pytest.raises(SxpError, match=r"line 3, column 6") as info:
        sxp.load_all("(a)\n(b)\n(c \"x\\z\")")
    assert info.value.pos == 13


def test_sxp_error_is_a_value_error() -> None:
    assert issubclass(SxpError, ValueError)


def test_reader_wants_text() -> None:
    with pytest.raises(TypeError):
        sxp.loads(b"(a)")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- hostile input


def test_nesting_limit() -> None:
    ok = "(" * sxp.MAX_DEPTH + ")" * sxp.MAX_DEPTH
    assert sxp.loads(ok) is not None
    too_deep = "(" * (sxp.MAX_DEPTH + 1) + ")" * (sxp.MAX_DEPTH + 1)
    with pytest.raises(SxpError, match="nesting deeper than 100"):
        sxp.loads(too_deep)
    assert sxp.loads("((a))", max_depth=2) == [["a"]]
    with pytest.raises(SxpError):
        sxp.loads("((a))", max_depth=1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "text",
    [
        "(" * 1_000_000,  # no RecursionError, stops at the limit
        ")" * 1_000_000,
        '"' + "\\a" * 200_000,  # unterminated string full of escapes
        "'" + "\\'" * 200_000,
        "(" + "a " * 200_000,  # unclosed after many atoms
        "#" * 1_000_000 + "\n(",
        '"' * 200_001,  # many empty strings then an unterminated one
    ],
)
def test_hostile_input_fails_cleanly(text: str) -> None:
    with pytest.raises(SxpError):
        sxp.load_all(text)


@pytest.mark.timeout(20)
def test_large_input_reads_in_linear_time() -> None:
    items = [f"item{i}" for i in range(200_000)] + ["with space"] * 1000
    assert sxp.loads(sxp.dumps(items)) == items


# ---------------------------------------------------------------------- config helpers


POOL = sxp.loads("(pool (name p1) (cpus 2) (cpu 0) (cpu 1) (flag) (other x y))")


def test_child_value() -> None:
    assert sxp.child_value(POOL, "name") == "p1"
    assert sxp.child_value(POOL, "cpus") == "2"
    assert sxp.child_value(POOL, "cpu") == "0"  # first one wins
    assert sxp.child_value(POOL, "missing") is None
    assert sxp.child_value(POOL, "missing", "dflt") == "dflt"
    assert sxp.child_value(POOL, "flag", "dflt") == "dflt"  # (flag) has no value
    assert sxp.child_value("atom", "name", 5) == 5


def test_name_children_child() -> None:
    assert sxp.name(POOL) == "pool"
    assert sxp.name("atom") is None
    assert sxp.name([]) is None
    assert sxp.children(POOL, "cpu") == [["cpu", "0"], ["cpu", "1"]]
    assert len(sxp.children(POOL)) == 6
    assert sxp.child(POOL, "other") == ["other", "x", "y"]
    assert sxp.child(POOL, "nope") is None

"""XAPI's filter language (get_all_records_where), as a unit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xend_ext import types as T
from xend_ext.datamodel import RW, Field, XenAPIClass
from xend_ext.filter import compile_filter
from xend_ext.wire import XenAPIError

CLS = XenAPIClass("thing", "test", [Field("name_label", T.String, RW), Field("power_state", T.String, RW),
                                    Field("n", T.Int, RW)])


def match(expr: str, **values) -> bool:
    return compile_filter(expr, CLS).test(values)


def test_equality_and_connectives():
    rec = {"name_label": "web", "power_state": "Running", "n": "3"}
    assert match('field "name_label"="web"', **rec)
    assert match('field "name_label"="web" and field "power_state"="Running"', **rec)
    assert not match('field "name_label"="db" and field "power_state"="Running"', **rec)
    assert match('field "name_label"="db" or field "power_state"="Running"', **rec)
    assert match('not field "name_label"="db"', **rec)
    assert match('"web"=field "name_label"', **rec)
    assert match('(field "n"="3" or false) and not (false)', **rec)
    assert match('field "name_label"="web" and field "n"="3" or field "n"="9"', **rec)


def test_fixed_are_the_equalities_every_match_has():
    """What an index may answer: field = literal joined by "and" at the top, never under or/not."""
    assert compile_filter('field "name_label"="web"', CLS).fixed == {"name_label": "web"}
    assert compile_filter('"web"=field "name_label" and (field "n"="3" and true)', CLS).fixed == {
        "name_label": "web", "n": "3"}
    assert compile_filter('field "name_label"="web" or field "n"="3"', CLS).fixed == {}
    assert compile_filter('not field "name_label"="web"', CLS).fixed == {}
    assert compile_filter('field "name_label"=field "power_state"', CLS).fixed == {}


def test_precedence_and_binds_tighter_than_or():
    assert match('true or false and false')
    assert not match('(true or false) and false')


def test_escapes_in_literals():
    assert match(r'field "name_label"="say \"hi\""', name_label='say "hi"')


@pytest.mark.parametrize("expr", ['field "nosuch"="1"', 'field "n"=', '"a"', 'field n="1"', '(true', 'true)',
                                  'true and', '=', 'field "n"="1" junk', "x" * 20000, "(" * 200 + "true" + ")" * 200])
def test_bad_expressions_are_invalid_value(expr):
    with pytest.raises(XenAPIError) as err:
        compile_filter(expr, CLS)
    assert err.value.code == "INVALID_VALUE" and err.value.params[0] == expr


@given(st.text(max_size=60))
def test_never_crashes(expr):
    try:
        compile_filter(expr, CLS)
    except XenAPIError as exc:
        assert exc.code == "INVALID_VALUE"

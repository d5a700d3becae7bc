"""The class description the store works from, value checks, and the state-file schema.

The store knows no Xen-API class: it is handed a *description*
``{class: [(field, kind, enum_values), ...]}`` and everything it checks or writes is
derived from that, in the same way the wire layer derives accessors.  Values are
*encoded* by the model before they reach us: scalars are ``str``, a set is a
``list[str]``, a map is a ``dict[str, str]``.

:func:`relaxng` turns the description into the RelaxNG grammar of the snapshot
(``state.xml``, format 3; :func:`relaxng_v2` and :func:`relaxng_v1` are the grammars of the
formats older versions wrote, still read).  Its output is deterministic (classes sorted by
name, fields in declaration order) so a checked-in ``schemas/state.rng`` can be compared with
it.  Each field is optional and fields may come in any order: a snapshot written before a
field was added still loads, and the model fills in the default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lxml import etree
from lxml.builder import ElementMaker

__all__ = [
    "B64",
    "FORMAT",
    "FORMAT_V1",
    "FORMAT_V2",
    "KINDS",
    "ROOT",
    "Classes",
    "Description",
    "FieldSpec",
    "check_value",
    "normalize",
    "relaxng",
    "relaxng_v1",
    "relaxng_v2",
    "xml_unsafe",
]

Description = Mapping[str, Sequence[tuple[str, str, tuple[str, ...]]]]

#: Snapshot format version written in ``<xend-ext-state format="3">`` (formats 1 and 2 are still read).
FORMAT = "3"
FORMAT_V2 = "2"
FORMAT_V1 = "1"
ROOT = "xend-ext-state"
#: Value of the ``enc`` / ``key-enc`` attributes marking base64 (UTF-8, surrogatepass).
B64 = "b64"

SCALAR_KINDS = frozenset({"string", "int", "float", "bool", "datetime", "ref", "enum"})
KINDS = SCALAR_KINDS | {"set", "map"}

# Kinds whose text is free-form and may therefore need the base64 escape in XML.
_TEXT_KINDS = frozenset({"string", "float", "datetime", "ref"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_INT = re.compile(r"[+-]?[0-9]+")
# Characters XML 1.0 cannot carry (lxml refuses them, parsers reject them).
_XML_UNSAFE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_unsafe(text: str) -> bool:
    """True when ``text`` must be base64-escaped to survive an XML 1.0 round trip."""
    return _XML_UNSAFE.search(text) is not None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field as the store sees it: its kind, and for enums the allowed names."""

    name: str
    kind: str
    values: frozenset[str]
    check: Callable[[object], bool]


Classes = dict[str, dict[str, FieldSpec]]


def _is_str(v: object) -> bool:
    return type(v) is str


def _checker(kind: str, values: frozenset[str]) -> Callable[[object], bool]:
    if kind in _TEXT_KINDS:
        return _is_str
    if kind == "int":
        return lambda v: type(v) is str and _INT.fullmatch(v) is not None
    if kind == "bool":
        return lambda v: v in ("true", "false")
    if kind == "enum":
        return lambda v: type(v) is str and v in values
    if kind == "set":
        return lambda v: type(v) is list and all(type(i) is str for i in v)
    return lambda v: type(v) is dict and all(
        type(k) is str and type(x) is str for k, x in v.items()
    )


def normalize(description: Description) -> Classes:
    """Check a description once and index it; bad names would only fail later, on disk."""
    classes: Classes = {}
    for cls, fields in description.items():
        if not isinstance(cls, str) or not _NAME.fullmatch(cls):
            raise ValueError(f"class name {cls!r} cannot be an XML element name")
        specs: dict[str, FieldSpec] = {}
        for entry in fields:
            fname, kind, values = entry
            if not isinstance(fname, str) or not _NAME.fullmatch(fname):
                raise ValueError(f"field name {cls}.{fname!r} cannot be an XML element name")
            if kind not in KINDS:
                raise ValueError(f"field {cls}.{fname} has unknown kind {kind!r}")
            if fname in specs:
                raise ValueError(f"field {cls}.{fname} is declared twice")
            if kind == "enum" and not values:
                raise ValueError(f"enum field {cls}.{fname} has no values")
            vals = frozenset(values or ())
            specs[fname] = FieldSpec(fname, kind, vals, _checker(kind, vals))
        classes[cls] = specs
    return classes


def check_value(spec: FieldSpec, value: object) -> None:
    """Raise ValueError unless ``value`` is a correctly encoded value for ``spec``."""
    if not spec.check(value):
        if spec.kind == "enum":
            expected = "one of " + ", ".join(sorted(spec.values))
        else:
            expected = {
                "int": "a decimal integer string",
                "bool": '"true" or "false"',
                "set": "a list of str",
                "map": "a dict of str to str",
            }.get(spec.kind, "a str")
        raise ValueError(f"field {spec.name} ({spec.kind}) must be {expected}, got {value!r}")


# --------------------------------------------------------------------------- RelaxNG

RNG_NS = "http://relaxng.org/ns/structure/1.0"
XSD_TYPES = "http://www.w3.org/2001/XMLSchema-datatypes"


def _maker() -> tuple[ElementMaker, Callable[[str], etree._Element], Callable[[], etree._Element]]:
    E = ElementMaker(namespace=RNG_NS, nsmap={None: RNG_NS})

    def exact(text: str) -> etree._Element:
        # type="string" (not the default token) so " true " is not accepted as "true".
        return E.value(text, type="string")

    def b64_text() -> etree._Element:
        return E.group(E.attribute(exact(B64), name="enc"), E.data(type="base64Binary"))

    return E, exact, b64_text


def _scalar_content(E: ElementMaker, exact: Callable[[str], etree._Element], spec: FieldSpec) -> etree._Element:
    if spec.kind == "int":
        return E.data(type="integer")
    if spec.kind == "bool":
        return E.choice(exact("true"), exact("false"))
    if spec.kind == "enum":
        return E.choice(*[exact(v) for v in sorted(spec.values)])
    return E.data(type="string")


def _grammar(E: ElementMaker, root_content: list, defines: list, *extra: etree._Element) -> str:
    grammar = E.grammar(
        etree.Comment(
            " Schema of the xend-ext state file (state.xml), generated by "
            "xend_ext.store.schema.relaxng() from the class declarations; do not edit. "
        ),
        E.start(E.element(*root_content, name=ROOT)),
        # Free text, or base64 of its UTF-8 (surrogatepass) for what XML cannot carry.
        E.define(E.choice(E.text(), E.group(E.attribute(E.value(B64, type="string"), name="enc"),
                                            E.data(type="base64Binary"))), name="text"),
        *extra,
        *defines,
        datatypeLibrary=XSD_TYPES,
    )
    body = etree.tostring(grammar, pretty_print=True, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _root_attributes(E: ElementMaker, exact: Callable[[str], etree._Element], fmt: str) -> list[etree._Element]:
    """The root's attributes in formats 2 and 3: the format, the seq, the grammar's digest."""
    return [
        E.attribute(exact(fmt), name="format"),
        E.attribute(E.data(type="nonNegativeInteger"), name="seq"),
        E.optional(E.attribute(E.data(type="string"), name="grammar")),
    ]


def relaxng(description: Description) -> str:
    """The RelaxNG grammar (XML syntax) of the snapshots written for ``description``.

    Format 3: a table's objects in blocks of rows, ``<rows n="N">``, each holding one element per
    column, named like its field (``<ref>`` for the objects' refs), whose text is its N values, one
    a line (see xend_ext.store.snapshot).  The lines of int, bool and enum columns are checked
    one by one (a pattern); strings, sets and maps are free text here (the reader checks that a
    set or map is one).
    """
    classes = normalize(description)
    E, exact, _ = _maker()
    root_content = _root_attributes(E, exact, FORMAT)
    defines: list[etree._Element] = []
    for cls in sorted(classes):
        specs = classes[cls]
        columns = []
        for fname, spec in specs.items():
            if spec.kind in ("int", "bool", "enum"):  # every line one of its values: a pattern
                one = {"int": "[+\\-]?[0-9]+", "bool": "true|false"}.get(spec.kind) or "|".join(
                    re.sub(r"([.\\?*+{}()\[\]|^$-])", r"\\\1", v) for v in sorted(spec.values))
                content = E.data(E.param(f"({one})(\\n({one}))*", name="pattern"), type="string")
            else:
                content = E.text()
            columns.append(E.optional(E.element(content, name=fname)))
        rows = E.element(E.attribute(E.data(type="positiveInteger"), name="n"),
                         E.interleave(E.element(E.text(), name="ref"), *columns), name="rows")
        table = E.element(E.attribute(exact(cls), name="class"), E.zeroOrMore(rows), name="table")
        defines.append(E.define(table, name=f"table.{cls}"))
        root_content.append(E.optional(E.ref(name=f"table.{cls}")))
    return _grammar(E, root_content, defines)


def relaxng_v2(description: Description) -> str:
    """The grammar of format 2, which older versions wrote.

    Format 2: one element per object, named like its class, its scalar fields as attributes
    (one C-level call reads them all back); a set item is ``<s f="field">item</s>``, a map entry
    ``<m f="field" k="key">value</m>``, an empty set or map the attribute ``field=""``, and a
    text XML cannot carry ``<v f="field" enc="b64">...</v>``.
    """
    classes = normalize(description)
    E, exact, b64_text = _maker()
    root_content = _root_attributes(E, exact, FORMAT_V2)
    defines: list[etree._Element] = []
    for cls in sorted(classes):
        specs = classes[cls]
        optional = []
        for fname, spec in specs.items():
            content = exact("") if spec.kind in ("set", "map") else _scalar_content(E, exact, spec)
            optional.append(E.optional(E.attribute(content, name=fname)))
        # interleave: libxml2 checks a plain group of optional attributes in exponential time
        attrs = [E.attribute(E.data(type="string"), name="ref"), *([E.interleave(*optional)] if optional else [])]
        names = {kind: [f for f, sp in specs.items() if sp.kind == kind] for kind in ("set", "map")}
        texts = [f for f, sp in specs.items() if sp.kind in _TEXT_KINDS]
        children = []
        if names["set"]:
            children.append(E.element(E.attribute(E.choice(*map(exact, names["set"])), name="f"),
                                      E.ref(name="text"), name="s"))
        if names["map"]:
            children.append(E.element(
                E.attribute(E.choice(*map(exact, names["map"])), name="f"),
                E.choice(E.attribute(E.data(type="string"), name="k"),
                         E.group(E.attribute(E.data(type="base64Binary"), name="k"),
                                 E.attribute(exact(B64), name="k-enc"))),
                E.ref(name="text"), name="m"))
        if texts:
            children.append(E.element(E.attribute(E.choice(*map(exact, texts)), name="f"), b64_text(), name="v"))
        body = attrs + ([E.zeroOrMore(E.choice(*children) if len(children) > 1 else children[0])] if children else [])
        obj = E.element(*body, name=cls)
        table = E.element(E.attribute(exact(cls), name="class"), E.zeroOrMore(obj), name="table")
        defines.append(E.define(table, name=f"table.{cls}"))
        root_content.append(E.optional(E.ref(name=f"table.{cls}")))
    return _grammar(E, root_content, defines)


def relaxng_v1(description: Description) -> str:
    """The grammar of format 1 (one element per field), which older servers wrote."""
    classes = normalize(description)
    E, exact, b64_text = _maker()

    def field_content(spec: FieldSpec) -> etree._Element:
        if spec.kind in _TEXT_KINDS:
            return E.ref(name="text")
        if spec.kind == "set":
            return E.ref(name="set")
        if spec.kind == "map":
            return E.ref(name="map")
        return _scalar_content(E, exact, spec)

    root_content: list[etree._Element] = [
        E.attribute(exact(FORMAT_V1), name="format"),
        E.attribute(E.data(type="nonNegativeInteger"), name="seq"),
    ]
    defines: list[etree._Element] = []
    for cls in sorted(classes):
        specs = classes[cls]
        members = [
            E.optional(E.element(field_content(spec), name=fname))
            for fname, spec in specs.items()
        ]
        if len(members) > 1:
            body: list[etree._Element] = [E.interleave(*members)]
        elif members:
            body = members
        else:
            body = [E.empty()]
        obj = E.element(E.attribute(E.data(type="string"), name="ref"), *body, name=cls)
        table = E.element(
            E.attribute(exact(cls), name="class"), E.zeroOrMore(obj), name="table"
        )
        defines.append(E.define(table, name=f"table.{cls}"))
        root_content.append(E.optional(E.ref(name=f"table.{cls}")))

    return _grammar(
        E, root_content, defines,
        E.define(E.zeroOrMore(E.element(E.ref(name="text"), name="item")), name="set"),
        E.define(
            E.zeroOrMore(
                E.element(
                    E.choice(
                        E.attribute(E.data(type="string"), name="key"),
                        E.group(
                            E.attribute(E.data(type="base64Binary"), name="key"),
                            E.attribute(exact(B64), name="key-enc"),
                        ),
                    ),
                    E.ref(name="text"),
                    name="entry",
                )
            ),
            name="map",
        ),
    )

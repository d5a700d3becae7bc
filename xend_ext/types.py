"""Xen-API value types: how a value is checked on input, stored, filtered and described.

One object per type answers every question the generic machinery asks, so a class module only
names the type of a field and never writes conversion code.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import TYPE_CHECKING, Any

from .wire import NULL_REF, XenAPIError, format_datetime, number_text

if TYPE_CHECKING:
    from .model import Database

_INT_RE = re.compile(r"^[+-]?\d{1,20}$")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class Type:
    name = "?"
    kind = "string"  # the store's word for the shape of an encoded value
    default: Any = ""

    def coerce(self, value: Any, db: Database | None, field: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return str(value)

    def decode(self, text: Any) -> Any:
        return text

    def filter_text(self, value: Any) -> str:
        """The text an expression of get_all_records_where compares with (XAPI's DB string)."""
        return str(self.encode(value))

    def fresh_default(self) -> Any:
        return self.default

    def __repr__(self) -> str:
        return self.name


def _type_error(field: str) -> XenAPIError:
    return XenAPIError("FIELD_TYPE_ERROR", field)


class StringType(Type):
    """Also what clients send for a string (docs/api/wire.md): a number as the text it was sent
    with, nil as the empty string."""

    name = "string"

    def coerce(self, value, db, field):
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return number_text(value)
        raise _type_error(field)


class IntType(Type):
    name = "int"
    kind = "int"
    default = 0

    def coerce(self, value, db, field):
        if isinstance(value, bool):
            raise _type_error(field)
        if isinstance(value, int):
            number = int(value)
        elif isinstance(value, str) and _INT_RE.match(value.strip()):
            number = int(value.strip())
        else:
            raise _type_error(field)
        if not _INT64[0] <= number <= _INT64[1]:
            raise XenAPIError("VALUE_NOT_SUPPORTED", field, value, "outside the 64-bit integer range")
        return number

    def decode(self, text):
        return int(text)


class FloatType(Type):
    name = "float"
    kind = "float"
    default = 0.0

    def coerce(self, value, db, field):
        if isinstance(value, bool):
            raise _type_error(field)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(field)

    def encode(self, value):
        return repr(float(value))

    def decode(self, text):
        return float(text)


class BoolType(Type):
    name = "bool"
    kind = "bool"
    default = False

    def coerce(self, value, db, field):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _type_error(field)

    def encode(self, value):
        return "true" if value else "false"

    def decode(self, text):
        return text == "true"


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class DateTimeType(Type):
    name = "datetime"
    kind = "datetime"
    default = _EPOCH

    def coerce(self, value, db, field):
        if isinstance(value, _dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        if isinstance(value, str):
            for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S"):
                try:
                    return _dt.datetime.strptime(value, fmt).replace(tzinfo=_dt.UTC)
                except ValueError:
                    continue
        raise _type_error(field)

    def encode(self, value):
        return format_datetime(value)

    def decode(self, text):
        return _dt.datetime.strptime(text, "%Y%m%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)


class EnumType(Type):
    kind = "enum"

    def __init__(self, name: str, values: tuple[str, ...]) -> None:
        self.name = name
        self.values = values
        self.default = values[0]

    def coerce(self, value, db, field):
        if not isinstance(value, str):
            raise _type_error(field)
        if value not in self.values:
            raise XenAPIError("VALUE_NOT_SUPPORTED", field, value, "expected one of " + ", ".join(self.values))
        return value


class RefType(Type):
    """A reference to an object of one class. ``OpaqueRef:<uuid>`` or the bare uuid on input."""

    kind = "ref"
    default = NULL_REF

    def __init__(self, target: str, nullable: bool = False) -> None:
        self.target = target
        self.nullable = nullable
        self.name = f"{target} ref"

    def coerce(self, value, db, field):
        if value is None:  # nil: no reference
            value = NULL_REF
        elif not isinstance(value, str):
            raise _type_error(field)
        if value == NULL_REF and self.nullable:
            return NULL_REF
        return db.lookup(self.target, value).ref


class SetType(Type):
    kind = "set"

    def __init__(self, item: Type) -> None:
        self.item = item
        self.name = f"{item.name} set"

    @property
    def default(self):  # type: ignore[override]
        return []

    def fresh_default(self):
        return []

    def coerce(self, value, db, field):
        if value is None:  # nil: the empty set
            return []
        if not isinstance(value, (list, tuple)):
            raise _type_error(field)
        out: list = []
        for item in value:
            item = self.item.coerce(item, db, field)
            if item not in out:
                out.append(item)
        return out

    def encode(self, value):
        return [self.item.encode(v) for v in value]

    def decode(self, text):
        return [self.item.decode(v) for v in text]

    def filter_text(self, value):
        return "(" + " ".join("'" + self.item.filter_text(v).replace("'", "\\'") + "'" for v in value) + ")"


class MapType(Type):
    kind = "map"

    def __init__(self, key: Type, value: Type) -> None:
        self.key = key
        self.value = value
        self.name = f"({key.name} -> {value.name}) map"

    @property
    def default(self):  # type: ignore[override]
        return {}

    def fresh_default(self):
        return {}

    def coerce(self, value, db, field):
        if value is None:  # nil: the empty map
            return {}
        if not isinstance(value, dict):
            raise _type_error(field)
        return {self.key.coerce(k, db, field): self.value.coerce(v, db, field) for k, v in value.items()}

    def encode(self, value):
        return {self.key.encode(k): self.value.encode(v) for k, v in value.items()}

    def decode(self, text):
        return {self.key.decode(k): self.value.decode(v) for k, v in text.items()}

    def filter_text(self, value):
        pairs = (f"('{self.key.filter_text(k)}' '{self.value.filter_text(v)}')" for k, v in value.items())
        return "(" + " ".join(pairs) + ")"


class AnyType(Type):
    """A free-form struct (results like event.from's or get_cpu_policy's): checked by the code."""

    name = "struct"

    def coerce(self, value, db, field):
        return value


String = StringType()
Int = IntType()
Float = FloatType()
Bool = BoolType()
DateTime = DateTimeType()
Struct = AnyType()


def Enum(name: str, *values: str) -> EnumType:  # noqa: N802 - reads like a type constructor
    return EnumType(name, values)


def Ref(target: str, nullable: bool = False) -> RefType:  # noqa: N802
    return RefType(target, nullable)


def Set(item: Type) -> SetType:  # noqa: N802
    return SetType(item)


def Map(key: Type, value: Type) -> MapType:  # noqa: N802
    return MapType(key, value)

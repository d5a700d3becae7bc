"""The declarations and what is derived from them: accessors, roles, the state-file schema."""

from __future__ import annotations

import json
from importlib import resources

from xenapi_classes import build_registry
from xend_ext import types as T
from xend_ext.datamodel import READ_ONLY, describe
from xend_ext.store.schema import relaxng


def test_generic_messages_are_derived_from_fields():
    registry = build_registry()
    for cls in registry.classes.values():
        if not cls.generic:
            continue
        for f in cls.fields.values():
            assert f"{cls.name}.get_{f.name}" in registry.methods
            has_setter = f"{cls.name}.set_{f.name}" in registry.methods
            assert has_setter == f.writable or f"set_{f.name}" in cls._custom
            if f.writable and isinstance(f.type, T.MapType):
                assert f"{cls.name}.add_to_{f.name}" in registry.methods
                assert f"{cls.name}.remove_from_{f.name}" in registry.methods
        for name in ("get_all", "get_all_records", "get_all_records_where", "get_record", "get_by_uuid"):
            assert registry.methods[f"{cls.name}.{name}"][1].role == READ_ONLY


def test_every_message_declares_a_role_and_accessors_are_sync_only():
    registry = build_registry()
    for name, (cls, msg) in registry.methods.items():
        assert msg.role in ("read-only", "vm-operator", "pool-admin"), name
        if msg.name.startswith(("get_", "set_", "add_to_", "remove_from_")):
            assert not msg.async_ok or msg.name in cls._custom, name


def test_checked_in_schema_matches_the_declarations():
    """schemas/state.rng is generated: regenerate with `xend-ext schema > schemas/state.rng`."""
    generated = relaxng(build_registry().description())
    checked_in = resources.files("schemas").joinpath("state.rng").read_text(encoding="utf-8")
    assert checked_in == generated


def test_checked_in_api_description_matches_the_declarations():
    """schemas/xenapi.json is generated: regenerate with `python -m xend_ext.apidoc` (with docs/api/)."""
    generated = json.dumps(describe(build_registry()), indent=1, sort_keys=True) + "\n"
    checked_in = resources.files("schemas").joinpath("xenapi.json").read_text(encoding="utf-8")
    assert checked_in == generated
    api = json.loads(checked_in)
    assert api["classes"]["host"]["messages"]["set_name_label"]["role"] == "pool-admin"
    assert api["classes"]["host"]["fields"]["host_CPUs"]["qualifier"] == "computed"

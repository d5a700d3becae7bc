"""The API reference in docs/api/ and schemas/xenapi.json: generated from the declarations, current,
complete; the error codes each message lists are the codes the code can answer."""

from __future__ import annotations

import json
import re

import pytest
import vmkit
import XenAPI
from conftest import ROOT

from xend_ext import apidoc
from xend_ext.errors import ANY_CALL, CATALOGUE

REGENERATE = "docs/api/ is stale: regenerate it with `python -m xend_ext.apidoc` and commit the result"


@pytest.fixture(scope="module")
def api():
    return apidoc.api()


def test_committed_pages_are_current(api):
    pages = apidoc.pages(api)
    docs = ROOT / "docs" / "api"
    for name, text in pages.items():
        path = docs / name
        assert path.exists(), f"{name} is missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{name} differs: {REGENERATE}"
    generated = {p.name for p in docs.glob("*.md") if p.read_text(encoding="utf-8").startswith(apidoc.MARK)}
    assert generated == set(pages), f"pages of classes that are gone: {REGENERATE}"
    assert (ROOT / "schemas" / "xenapi.json").read_text(encoding="utf-8") == apidoc.schema_text(api), REGENERATE


def test_every_page_the_index_names_exists_and_every_link_resolves():
    docs = ROOT / "docs" / "api"
    for page, _ in apidoc.HAND_WRITTEN:
        assert (docs / page).exists(), page
    for page in docs.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text):
            assert (docs / target).exists(), f"{page.name} links to {target}"
        for anchor in re.findall(r"\]\(errors\.md#([a-z_]+)\)", text):
            assert anchor.upper() in CATALOGUE, f"{page.name} links to error {anchor}"


def test_the_readme_points_into_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme and "API.md" not in readme
    assert "docs/api/index.md" in readme


def test_every_field_has_a_doc_and_every_enum_its_values(api):
    undocumented = [f"{c}.{f}" for c, cls in api["classes"].items() for f, d in cls["fields"].items() if not d["doc"]]
    assert undocumented == []
    assert api["enums"]["vm_power_state"] == ["Halted", "Running", "Paused", "Suspended", "Unknown"]
    assert api["errors"]["VM_BAD_POWER_STATE"]["params"] == ["vm", "expected", "actual"]


def test_the_catalogue_is_the_codes_the_source_raises():
    """Every code written in an error the server raises is catalogued, and every catalogued code is
    raised somewhere (the dispatcher's and the wire's included)."""
    raised = set()
    for path in [*(ROOT / "xend_ext").rglob("*.py"), *(ROOT / "xenapi_classes").glob("*.py")]:
        if "cli" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        raised |= set(re.findall(r'(?:XenAPIError|BackendError)\(\s*"([A-Z]+_[A-Z_]+)"', text))
        raised |= set(re.findall(r'BackendError\([^()]*(?:\([^()]*\)[^()]*)*?,\s*"([A-Z]+_[A-Z_]+)"', text))
        raised |= set(re.findall(r'failure\(\[\s*"?([A-Z]+_[A-Z_]+)', text))
    raised |= {"STORE_WRITE_FAILED", "BACKEND_ERROR"}  # a named constant, and BackendError's default
    assert raised - set(CATALOGUE) == set(), "raised but not in xend_ext/errors.py's CATALOGUE"
    assert set(CATALOGUE) - raised == set(), "catalogued but never raised"


def test_messages_list_their_generic_and_their_own_codes(api):
    start = api["classes"]["VM"]["messages"]["start"]["errors"]
    # the dispatcher's checks, the declared codes, and what the body reaches: the pool checks every
    # start runs (a registry hook), the hypervisor's refusals
    for code in ("SESSION_INVALID", "RBAC_PERMISSION_DENIED", "HANDLE_INVALID", "NOT_IMPLEMENTED",
                 "STORE_WRITE_FAILED", "VM_BAD_POWER_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY", "POOL_BAD_STATE",
                 "BACKEND_ERROR"):
        assert code in start, code
    getter = api["classes"]["host"]["messages"]["get_name_label"]["errors"]
    assert getter == ["FIELD_TYPE_ERROR", "HANDLE_INVALID", "MESSAGE_PARAMETER_COUNT_MISMATCH", "SESSION_INVALID"]
    assert "RBAC_PERMISSION_DENIED" in api["classes"]["session"]["messages"]["get_record"]["errors"]
    login = api["classes"]["session"]["messages"]["login_with_password"]["errors"]
    assert "SESSION_INVALID" not in login and "SESSION_AUTHENTICATION_FAILED" in login
    for cls in api["classes"].values():
        for msg in cls["messages"].values():
            assert not set(ANY_CALL) & set(msg["errors"])


def test_the_codes_a_server_answers_are_listed(server, api):
    """Failures caused on a real server: each code answered is among those its message lists."""
    x = vmkit.session(server).xenapi
    vm = x.VM.create({"name_label": "w", "memory_static_max": "268435456", "pool_name": "nowhere"})
    calls = [
        ("VM.start", lambda: x.VM.start(vm, False, False)),  # its pool is not active
        ("VM.pause", lambda: x.VM.pause(vm)),  # halted
        ("VM.set_memory", lambda: x.VM.set_memory(vm, "1", "dynamic")),
        ("cpu_pool.create", lambda: x.cpu_pool.create({"name_label": "bad name!"})),
        ("cpu_pool.activate", lambda: x.cpu_pool.activate(x.cpu_pool.create({"name_label": "big", "ncpu": "99"}))),
        ("host.get_record", lambda: x.host.get_record("OpaqueRef:nope")),
        ("event.from", lambda: getattr(x.event, "from")(["nope"], "", 0.0)),
        ("sched_domain.create", lambda: x.sched_domain.create({"master": vm, "members": [vm]})),
    ]
    answered = []
    for method, call in calls:
        with pytest.raises(XenAPI.Failure) as failed:
            call()
        cname, mname = method.split(".")
        code = failed.value.details[0]
        answered.append(code)
        assert code in api["classes"][cname]["messages"][mname]["errors"], (method, failed.value.details)
    assert len(set(answered)) >= 5, answered  # the calls above reach different checks


def test_describe_command_and_schema_agree(api):
    assert json.loads(apidoc.schema_text(api)) == api

"""Server-side files live under the image directory (--image-dir, default <state dir>/images):
VM.save, VM.restore and the group save and restore take paths inside it, relative or absolute,
refuse anything outside it (after ``..`` and symlinks) with VALUE_NOT_SUPPORTED, and never
overwrite a file unless asked."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from conftest import ServerProcess
from vmkit import everything, failure, new_vm, session


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """A server with the default image directory: nothing is said about it on the command line."""
    server = ServerProcess(tmp_path_factory.mktemp("images") / "state", unix=False)
    server.image_root = None
    server.start()
    yield server
    server.stop()


@pytest.fixture
def x(default_server):
    s = session(default_server)
    yield s.xenapi
    s.xenapi.session.logout()


def images(server) -> Path:
    """The default image directory (the server makes it at its first save or restore; a test that
    writes there first makes it itself)."""
    folder = Path(server.state_dir) / "images"
    folder.mkdir(exist_ok=True)
    return folder


def running(x, name):
    vm = new_vm(x, name)
    x.VM.start(vm, False, False)
    return vm


def test_relative_and_absolute_paths_inside_the_default_image_directory(default_server, x):
    vm = running(x, "rel")
    x.VM.save(vm, "rel.img")
    assert (images(default_server) / "rel.img").is_file()
    assert x.VM.restore("rel.img", False) == vm
    inside = images(default_server) / "sub" / "abs.img"
    inside.parent.mkdir()
    x.VM.save(vm, str(inside))
    assert inside.is_file()
    assert x.VM.restore("sub/../sub/abs.img", False) == vm  # '..' that stays inside is fine
    x.VM.hard_shutdown(vm)


@pytest.mark.parametrize("path", ["/tmp/outside.img", "../outside.img", "sub/../../outside.img", "link/outside.img",
                                  "/etc/passwd"])
def test_a_path_outside_is_refused_before_anything_changes(default_server, x, tmp_path, path):
    link = images(default_server) / "link"
    link.unlink(missing_ok=True)
    link.symlink_to(tmp_path)  # a symlink inside the directory pointing out of it
    vm = running(x, f"out-{uuid.uuid4().hex}")  # one server serves every parameter: names must differ
    before = everything(default_server, x, vm)
    refused = failure(x.VM.save, vm, path)
    assert refused[:3] == ["VALUE_NOT_SUPPORTED", "path", path] and "outside the image directory" in refused[3]
    assert everything(default_server, x, vm) == before
    assert not (tmp_path / "outside.img").exists() and not Path("/tmp/outside.img").exists()
    refused = failure(x.VM.restore, path, False)  # nothing is read from outside either
    assert refused[:3] == ["VALUE_NOT_SUPPORTED", "path", path] and "outside the image directory" in refused[3]
    x.VM.hard_shutdown(vm)


def test_an_existing_file_is_replaced_only_when_asked(default_server, x):
    vm = running(x, "keep")
    target = images(default_server) / "keep.img"
    target.write_bytes(b"precious")
    before = everything(default_server, x, vm)
    refused = failure(x.VM.save, vm, "keep.img")
    assert refused == ["VALUE_NOT_SUPPORTED", "path", "keep.img",
                       "a file of this name exists; pass overwrite=true to replace it"]
    assert target.read_bytes() == b"precious" and everything(default_server, x, vm) == before
    x.VM.save(vm, "keep.img", True)
    assert target.read_bytes() != b"precious"
    assert x.VM.restore("keep.img", False) == vm
    x.VM.hard_shutdown(vm)


def test_group_save_and_restore_stay_in_the_image_directory(default_server, x):
    members = [new_vm(x, f"g{i}", order=str(i)) for i in range(2)]
    group = x.VM_group.create({"name_label": "kept", "VMs": members})
    x.VM_group.start(group, False)
    assert failure(x.VM_group.save, group, "/tmp")[:3] == ["VALUE_NOT_SUPPORTED", "directory", "/tmp"]
    x.VM_group.save(group, "kept")  # made in the image directory
    folder = images(default_server) / "kept"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["group.sxp", *(f"{x.VM.get_uuid(vm)}.img" for vm in members)])
    for vm in members:
        x.VM.start(vm, False, False)
    refused = failure(x.VM_group.save, group, "kept")
    assert refused[:3] == ["VALUE_NOT_SUPPORTED", "directory", "kept"] and "overwrite" in refused[3]
    assert {x.VM.get_power_state(vm) for vm in members} == {"Running"}
    x.VM_group.save(group, "kept", True)
    assert x.VM_group.restore("kept", False) == group
    assert {x.VM.get_power_state(vm) for vm in members} == {"Running"}
    x.VM_group.hard_shutdown(group)


def test_a_manifest_cannot_lead_out_of_the_directory(default_server, x):
    folder = images(default_server) / "forged"
    folder.mkdir()
    (folder / "group.sxp").write_text('(vm_group (uuid 7b3c1d9e-0000-4000-8000-000000000001) (name_label forged)'
                                      ' (member (uuid ../../../etc/passwd) (order 0)))\n')
    before = x.VM_group.get_all()
    refused = failure(x.VM_group.restore, "forged", False)
    assert refused[:3] == ["VALUE_NOT_SUPPORTED", "directory", "forged"] and "bad uuid" in refused[3]
    assert x.VM_group.get_all() == before


def test_image_dir_flag(tmp_path):
    chosen = tmp_path / "elsewhere"
    server = ServerProcess(tmp_path / "state", "--image-dir", str(chosen), unix=False).start()
    try:
        x = session(server).xenapi
        vm = running(x, "flag")
        x.VM.save(vm, "flag.img")
        assert (chosen / "flag.img").is_file() and not (tmp_path / "state" / "images").exists()
        refused = failure(x.VM.restore, str(tmp_path / "state" / "x.img"), False)
        assert refused[0] == "VALUE_NOT_SUPPORTED" and str(chosen.resolve()) in refused[3]
    finally:
        server.stop()
    assert os.path.isdir(chosen)

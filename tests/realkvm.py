"""The real-KVM test stage: a private libvirtd with the QEMU driver, one per pytest session.

``scripts/realkvm/`` builds the test guest (tiny-kvm.S, a multiboot kernel that halts, or spins
on its first vCPU with ``burn`` on its command line) and starts libvirtd and virtlogd as root in a
mount namespace of their own, under a temporary directory (start-libvirtd.sh says how). Guests run
on KVM where /dev/kvm runs one, else on QEMU's TCG: ``KVM_WORKS`` is decided once, by booting the
guest under KVM for a moment. A daemon that cannot start is a test FAILURE, never a skip.

The fixture ``libvirtd`` (import ``libvirtd_fixture``) gives the :class:`Libvirtd`; ``KvmHost`` in
hosts.py starts servers on it. ``daemon(1)`` is a second host beside it, for live migrations.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "realkvm"
CACHE = Path(os.environ.get("XEND_REALKVM_CACHE", "/var/cache/xend-ext-realkvm"))
GUEST = CACHE / "tiny-kvm"
PREFIX = "xend-realkvm-"  # the daemons' directories, under the temporary directory


def kvm_works() -> bool:
    """Whether /dev/kvm runs our guest: it must say so on its serial port within 3 s (a KVM that
    cannot run ordinary guests, such as a PVM host's, never gets that far)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-m", "16", "-display", "none", "-monitor", "none",
           "-no-reboot", "-serial", "stdio", "-kernel", str(GUEST), "-append", "idle"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=3, check=False).stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
    return b"tiny-kvm: idle" in out


class Libvirtd:
    """The session's daemon: its URI, the domain type guests get, and how to stop it."""

    def __init__(self, workdir: Path, domain_type: str = "") -> None:
        self.dir = workdir
        self.uri = f"qemu+unix:///system?socket={workdir}/sock/libvirt-sock"
        self.domain_type = domain_type

    def virsh(self, *args: str) -> str:
        done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"virsh {args}: {done.stderr}"
        return done.stdout

    def clean(self) -> None:
        """No domain left (running or defined)."""
        for name in self.virsh("list", "--all", "--name").split():
            subprocess.run(["virsh", "-c", self.uri, "destroy", name], capture_output=True, timeout=60)
            subprocess.run(["virsh", "-c", self.uri, "undefine", "--managed-save", name], capture_output=True,
                           timeout=60)

    def stop(self) -> None:
        try:
            self.clean()
        except (AssertionError, subprocess.SubprocessError):
            pass
        for name in ("libvirtd", "virtlogd"):
            pidfile = self.dir / f"{name}.pid"
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


_DAEMONS: dict[int, Libvirtd] = {}
_KVM: list[bool] = []  # whether KVM runs the guest, decided once
MIGRATION_PORTS = 49152  # daemon i takes QEMU's migration streams on 64 ports from MIGRATION_PORTS + 64 i


def daemon(index: int = 0) -> Libvirtd:
    """The session's libvirtd number ``index`` (0: the stage's host; 1: a second host, to migrate
    to), started (and the guest built) on first use. Each has its own host uuid and ports."""
    if index not in _DAEMONS:
        if not _DAEMONS:
            for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):  # a run killed before its teardown:
                if not _alive(old / "owner"):  # its guests would burn CPU for ever
                    Libvirtd(old).stop()
        workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
        (workdir / "owner").write_text(str(os.getpid()))
        steps = [] if _DAEMONS else [["bash", str(SCRIPTS / "install-deps.sh")], ["bash", str(SCRIPTS / "build.sh")]]
        steps.append(["bash", str(SCRIPTS / "start-libvirtd.sh"), str(workdir), str(CACHE / "libvirt-cache"),
                      str(MIGRATION_PORTS + 64 * index)])
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.fail(f"the real-KVM stage cannot run here: {' '.join(step)}: {done.stderr.strip()}",
                            pytrace=False)
        if not _KVM:
            _KVM.append(kvm_works())
        _DAEMONS[index] = Libvirtd(workdir, "kvm" if _KVM[0] else "qemu")
        atexit.register(_DAEMONS[index].stop)  # also when the stage's timeout interrupts the session
    return _DAEMONS[index]


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session", name="libvirtd")
def libvirtd_fixture() -> Libvirtd:
    d = daemon()
    yield d
    d.stop()

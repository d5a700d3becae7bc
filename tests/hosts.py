"""The hypervisors a test server can run on, one parametrised suite over them.

A test module marks itself ``pytestmark = pytest.mark.backends("sim", "libvirt")`` and asks for the
``backend`` fixture (a :class:`Host`); ``ServerProcess(..., host=backend)`` or ``make_server`` then
starts the server on that hypervisor. The sim's own flags (``--cpus``, ``--memory``) describe the
host the test wants; each Host turns them into what its backend needs (for libvirt, a private fake
host from libvirt's test driver, written as a node XML beside the state directory).
"""

from __future__ import annotations

from pathlib import Path

SIM_FLAGS = {"--cpus": 8, "--memory": 16384, "--numa-nodes": 1}


def _take(extra: list[str], flag: str, default):
    """The value of ``flag`` in ``extra`` (removed from it), else ``default``."""
    if flag in extra:
        i = extra.index(flag)
        value = extra[i + 1]
        del extra[i:i + 2]
        return type(default)(value)
    return default


class Host:
    name = "?"
    sched = "credit"  # the scheduler of Pool-0, the host's default
    schedulers = ("credit", "credit2")  # those a pool can be activated with (no backend has sedf)

    def args(self, state_dir: Path, extra: list[str]) -> list[str]:
        """The server's command-line arguments for this hypervisor (``extra`` may be consumed)."""
        raise NotImplementedError

    def boot_fields(self) -> dict[str, str]:
        """What a VM record needs to boot on this hypervisor (vmkit.new_vm adds it)."""
        return {}

    def __repr__(self) -> str:
        return self.name


class SimHost(Host):
    name = "sim"

    def args(self, state_dir: Path, extra: list[str]) -> list[str]:
        return []  # the sim flags are the simulated host's own


class LibvirtHost(Host):
    """libvirt's test driver: a private host per server from a node XML (exactly what --cpus and
    --memory ask). The test driver's host lives inside the server process, so a server restart is
    a host reboot: only the node file's (empty) domain list comes back."""

    name = "libvirt"

    def args(self, state_dir: Path, extra: list[str]) -> list[str]:
        cpus = _take(extra, "--cpus", 8)
        memory = _take(extra, "--memory", 16384)
        _take(extra, "--numa-nodes", 1)  # a custom test-driver host cannot describe NUMA cells
        if "--sim-reboot" in extra:
            extra.remove("--sim-reboot")  # every restart is a reboot of the test driver's host
        if cpus > 8:
            raise ValueError("libvirt's test driver pins only pCPUs 0-7: give the test host at most 8")
        node = Path(state_dir).parent / f"{Path(state_dir).name}-libvirt-host.xml"
        node.parent.mkdir(parents=True, exist_ok=True)
        node.write_text(
            "<node>\n"
            f"  <cpu><mhz>2400</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores>"
            f"<threads>1</threads><active>{cpus}</active></cpu>\n"
            f"  <memory>{memory * 1024}</memory>\n"
            "</node>\n", encoding="utf-8")
        return ["--backend", "libvirt", "--libvirt-uri", f"test://{node}"]


HOSTS: dict[str, Host] = {"sim": SimHost(), "libvirt": LibvirtHost()}


class XlHost(Host):
    """Real Xen 4.17 under QEMU (tests/realxen.py), driven through its host-side ``xl``. The
    machine is what it is: 8 pCPUs as the suite's hosts, but 4 GiB (not 16), and one machine for
    the whole session (a server restart is not a reboot; ``--sim-reboot`` stands for one by removing
    every guest and pool, which is what the toolstack sees of it). A test that asks for another host fails
    here rather than run on one it did not ask for. Booted once per session, on first use."""

    name = "xl"
    sched = "credit2"  # realxen: credit's timer once crashed Xen under emulation
    schedulers = ("credit", "credit2")  # Xen 4.17 has no sedf (and xl's weight and cap need these two)
    machine = {"--cpus": 8, "--memory": 4096, "--numa-nodes": 1}

    def args(self, state_dir: Path, extra: list[str]) -> list[str]:
        import realxen  # the machine is booted lazily: only the tests that run on xl pay for it

        for flag, default in SIM_FLAGS.items():
            if _take(extra, flag, default) not in (default, self.machine[flag]):
                raise ValueError(f"the Xen machine cannot be given {flag}: it is {self.machine}")
        xen = realxen.machine()
        reboot = "--sim-reboot" in extra  # what a toolstack sees of a host reboot: every guest and pool gone
        if reboot:
            extra.remove("--sim-reboot")
        if reboot or not (Path(state_dir) / "xl-backend.json").exists():  # a new server gets a new host too
            xen.clean()
        # a poll takes two xl calls (~0.4 s under emulation): every 5 s leaves the channel to the test
        return ["--backend", "xl", "--xl-path", xen.xl, "--xl-poll", "5"]

    def boot_fields(self) -> dict[str, str]:
        import realxen

        return realxen.pv_fields()


HOSTS["xl"] = XlHost()


class KvmHost(Host):
    """A real libvirtd with the QEMU driver (tests/realkvm.py), on KVM or TCG. The host is the
    machine itself: its pCPUs and memory, not --cpus and --memory, which are refused if asked."""

    name = "kvm"

    def __init__(self, index: int = 0, migrate: bool = False) -> None:
        self.index = index  # which of the session's libvirtds (realkvm.daemon)
        self.migrate = migrate  # offer live migration: the daemon's URI, the stream on 127.0.0.1

    def args(self, state_dir: Path, extra: list[str]) -> list[str]:
        import realkvm  # the daemon starts lazily: only the stage's tests pay for it

        for flag, default in SIM_FLAGS.items():
            if _take(extra, flag, default) != default:
                raise ValueError(f"the KVM host cannot be given {flag}: it is the machine itself")
        d = realkvm.daemon(self.index)
        live = ["--libvirt-migrate-uri", d.uri, "--libvirt-migrate-address", "127.0.0.1"] if self.migrate else []
        return ["--backend", "libvirt", "--libvirt-uri", d.uri, "--libvirt-domain-type", d.domain_type, *live]

    def boot_fields(self) -> dict[str, str]:
        import realkvm

        return {"PV_kernel": str(realkvm.GUEST), "PV_ramdisk": "", "PV_args": ""}


HOSTS["kvm"] = KvmHost()

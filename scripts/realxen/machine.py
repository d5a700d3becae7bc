#!/usr/bin/env python3
"""Boot the emulated Xen machine (Xen 4.17 + a Linux PV dom0 under QEMU TCG) and give a host-side `xl`.

Usage: ``machine.py up RUN_DIR`` boots it and prints the shim's path (QEMU keeps running; its pid is
in ``RUN_DIR/qemu.pid``); ``machine.py down RUN_DIR`` powers it off. The test fixture
(tests/realxen.py) uses :class:`Machine` directly. Needs install-deps.sh and build.sh first.

The machine: 8 pCPUs and 4 GiB, the host the shared test suite assumes (dom0 has 2 vCPUs and
384 MiB; idle emulated CPUs cost nothing, nor does memory no guest has touched). Pool-0 runs
credit2, Xen's default, and so do the tests' pools: Xen 4.17's credit scheduler faults in its tick
(a NULL pointer in csched_tick, "Panic on CPU 3 ... FATAL PAGE FAULT") when a pCPU moves from a
credit2 pool into a credit one, now and then (seen twice under emulation, the last in a fresh
run of `make test` when `xl cpupool-create sched="credit"` took pCPU 3). Xen then tries to
reboot, which ends QEMU (-no-reboot), or hangs in the attempt: :meth:`Machine.dead` reads the
console as well, so the next test gets a new machine instead of waiting on a dead one.
The host's temporary directory and the build cache are shared into dom0
over 9p at the same paths, so the xl config files, kernels and save images the backend names
mean the same file on both sides.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XEND_REALXEN_CACHE", "/var/cache/xend-ext-realxen"))
CRASH = ("Panic on CPU", "Kernel panic", "Hardware Dom0 crashed", "Domain 0 crashed", "@@REALXEN FAILED")


class MachineError(RuntimeError):
    pass


class Machine:
    def __init__(self, run_dir: Path, cpus: int = 8, memory_mib: int = 4096, sched: str = "credit2") -> None:
        self.run_dir = Path(run_dir)
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.sched = sched
        self.proc: subprocess.Popen | None = None
        self.shares = sorted({os.path.realpath(tempfile.gettempdir()), str(CACHE)})

    @property
    def xl(self) -> Path:
        return self.run_dir / "xl"

    @property
    def consoles(self) -> Path:
        """Where the guests' consoles are logged (guest-NAME.log), when the run dir is shared."""
        return self.run_dir.resolve() / "consoles"

    @property
    def serial(self) -> Path:
        return self.run_dir / "serial.log"

    def prepare(self, timeout: float = 600) -> None:
        """Install the packages (when missing) and build the boot files (when stale)."""
        for script in ("install-deps.sh", "build.sh"):
            run = subprocess.run([str(HERE / script)], capture_output=True, text=True, timeout=timeout)
            if run.returncode != 0:
                raise MachineError(f"{script} failed (exit {run.returncode}):\n{run.stdout}{run.stderr}")

    def boot(self, timeout: float = 120) -> Path:
        """Start QEMU and wait until dom0 serves xl; returns the shim's path."""
        files = CACHE / "machine"
        for name in ("xen", "vmlinuz", "dom0-initrd.gz", "xl-shim"):
            if not (files / name).is_file():
                raise MachineError(f"{files / name} is missing: run scripts/realxen/build.sh")
        if shutil.which("qemu-system-x86_64") is None:
            raise MachineError("qemu-system-x86_64 is not installed: run scripts/realxen/install-deps.sh")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        sock = self.run_dir / "xlctl.sock"
        sock.unlink(missing_ok=True)
        shutil.copy(files / "xl-shim", self.xl)
        self.xl.chmod(0o755)
        xen_args = (f"console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=384M,max:384M "
                    f"dom0_max_vcpus=2 sched={self.sched} bootscrub=false")
        dom0_args = "console=hvc0 earlyprintk=xen rdinit=/init loglevel=4 " + " ".join(
            f"realxen.share=share{i}:{path}" for i, path in enumerate(self.shares))
        if any(self.consoles.is_relative_to(share) for share in self.shares):
            self.consoles.mkdir(exist_ok=True)
            dom0_args += f" realxen.consoles={self.consoles}"
        if "," in dom0_args:  # QEMU's multiboot -initrd list is comma-separated
            raise MachineError(f"a shared path contains a comma: {self.shares}")
        cmd = ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg,thread=multi",
               # -smap: TCG's SMAP emulation breaks Xen's accesses to PV guest stacks (dom0 crashes)
               "-cpu", "max,-smap", "-smp", str(self.cpus), "-m", str(self.memory_mib),
               "-display", "none", "-vga", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
               "-serial", f"file:{self.serial}",
               "-kernel", str(files / "xen"), "-append", xen_args,
               "-initrd", f"{files / 'vmlinuz'} {dom0_args},{files / 'dom0-initrd.gz'}",
               "-device", "virtio-serial-pci,disable-modern=on",
               "-chardev", f"socket,id=xlctl,path={sock},server=on,wait=off",
               "-device", "virtserialport,chardev=xlctl,name=xlctl"]
        for i, path in enumerate(self.shares):
            cmd += ["-fsdev", f"local,id=fs{i},path={path},security_model=none",
                    "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag=share{i},disable-modern=on"]
        log = open(self.run_dir / "qemu.log", "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        (self.run_dir / "qemu.pid").write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
            if "@@REALXEN READY" in text:
                break
            crash = next((c for c in CRASH if c in text), None)
            if crash or self.proc.poll() is not None:
                self.stop()
                why = f"'{crash}' on the console" if crash else f"QEMU exited with {self.proc.returncode}"
                raise MachineError(f"the Xen machine did not boot: {why}\n{self._tail()}")
            time.sleep(0.2)
        else:
            self.stop()
            raise MachineError(f"the Xen machine did not boot within {timeout:.0f} s\n{self._tail()}")
        check = subprocess.run([str(self.xl), "info"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0 or "xen_version" not in check.stdout:
            self.stop()
            raise MachineError(f"dom0 is up but `xl info` fails: {check.stderr}{self._tail()}")
        return self.xl

    def _tail(self, lines: int = 40) -> str:
        parts = []
        for f in (self.serial, self.run_dir / "qemu.log"):
            if f.exists():
                last = f.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"---- last lines of {f}:\n" + "\n".join(last))
        return "\n".join(parts)

    def dead(self) -> str:
        """Why the machine can no longer serve ('' while it can): QEMU ended, or a crash on the
        console after the boot (Xen may hang trying to reboot after a panic)."""
        if self.proc is None or self.proc.poll() is not None:
            return "QEMU has ended"
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        after = text[text.find("@@REALXEN READY"):]
        return next((f"'{c}' on the console" for c in CRASH if c in after), "")

    def stop(self, timeout: float = 15) -> None:
        """Power dom0 off (QEMU then exits); kill QEMU if it does not."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(str(self.run_dir / "xlctl.sock"))
            s.sendall(b"@@POWEROFF\n")  # dom0 reads it as a line of its own
            s.close()
            self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    run_dir = Path(argv[2])
    if argv[1] == "up":
        machine = Machine(run_dir)
        machine.prepare()
        print(machine.boot())
        return 0
    pid = int((run_dir / "qemu.pid").read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

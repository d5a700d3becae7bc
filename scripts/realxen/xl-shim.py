#!/usr/bin/env python3
"""Host-side `xl`: runs `xl ARGS` in the emulated dom0 and gives back its stdout, stderr and status.

Installed as ``<run dir>/xl`` beside the machine's control socket ``<run dir>/xlctl.sock`` (a QEMU
virtio-serial port that dom0's /init serves). One command at a time: QEMU's socket takes one client
and dom0 answers in order, so concurrent callers (the server's workers, its poll thread, a test)
queue on a lock file. File arguments need no shipping: the host directories the backend uses are
shared into dom0 over 9p at the same paths.
"""

import fcntl
import os
import shlex
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOCK = os.path.join(HERE, "xlctl.sock")
TIMEOUT = float(os.environ.get("XEND_REALXEN_XL_TIMEOUT", "120"))


def remote_command(args: list[str]) -> str:
    """The dom0 shell line for ``xl ARGS``.

    ``xl save`` writes guest memory straight from its mapping of the guest's pages, which the 9p
    transport cannot take (its zero-copy path fails with EFAULT on foreign mappings): the image
    is written to dom0's tmpfs and then copied to the shared path the caller named.
    """
    if args[:1] == ["save"]:
        positional = [i for i, a in enumerate(args) if i > 0 and not a.startswith("-")]
        if len(positional) >= 2:
            target = args[positional[1]]
            local = "/run/realxen-save.img"
            args = [*args[:positional[1]], local, *args[positional[1] + 1:]]
            return (f"{shlex.join(['xl', *args])}; rc=$?; if [ $rc = 0 ]; then "
                    f"cat {local} > {shlex.quote(target)} || rc=1; fi; rm -f {local}; exit $rc")
    return shlex.join(["xl", *args])


def main() -> int:
    command = remote_command(sys.argv[1:])
    with open(os.path.join(HERE, "xl.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                s.connect(SOCK)
                break
            except (ConnectionRefusedError, FileNotFoundError, BlockingIOError):
                if time.monotonic() > deadline:
                    print(f"xl shim: cannot reach the Xen machine at {SOCK} (is QEMU running?)", file=sys.stderr)
                    return 255
                time.sleep(0.05)
        s.settimeout(TIMEOUT)
        token = f"{os.getpid()}.{time.monotonic_ns()}"
        s.sendall(f"{token} {command}\n".encode())
        rc = 255
        out: list[str] = []
        err: list[str] = []
        try:
            for raw in s.makefile("rb"):
                line = raw.decode(errors="replace")
                if line.startswith("@@RC "):
                    answer, _, status = line[5:].strip().rpartition(" ")
                    if answer != token:  # the late answer of a client that gave up: not ours
                        out.clear()
                        err.clear()
                        continue
                    rc = int(status)
                    sys.stdout.write("".join(out))
                    sys.stderr.write("".join(err))
                    break
                if line.startswith("O "):
                    out.append(line[2:])
                elif line.startswith("E "):
                    err.append(line[2:])
            else:
                print("xl shim: the Xen machine closed the channel without an exit status", file=sys.stderr)
        except TimeoutError:
            print(f"xl shim: no answer from the Xen machine within {TIMEOUT:.0f} s", file=sys.stderr)
        finally:
            s.close()
        return rc


if __name__ == "__main__":
    sys.exit(main())

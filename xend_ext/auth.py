"""Login backends and the password file.

``none``: anyone logs in, as pool-admin (xend's default). ``file``: one line per user,
``user:role:scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``, hashed with scrypt (hashlib, OpenSSL) so a
stolen file does not give the passwords away. The file is re-read when it changes, so
``xend-ext passwd`` takes effect at the next login without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .datamodel import POOL_ADMIN, ROLES

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


class AuthError(Exception):
    pass


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected), maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def read_password_file(path: Path) -> dict[str, tuple[str, str]]:
    users: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return users
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ROLES:
            raise AuthError(f"{path}:{lineno}: expected user:role:hash with a role among {', '.join(ROLES)}")
        users[parts[0]] = (parts[1], parts[2])
    return users


def set_password(path: Path, user: str, password: str, role: str) -> None:
    """Add or change a user; the file is replaced atomically and kept private (0600)."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise AuthError("a user name may not be empty or contain ':' or white space")
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    users = read_password_file(path)
    users[user] = (role, hash_password(password))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# xend-ext users: user:role:scrypt hash (managed by 'xend-ext passwd')\n")
        for name, (r, h) in sorted(users.items()):
            fh.write(f"{name}:{r}:{h}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class NoAuth:
    async def authenticate(self, user: str, password: str) -> str | None:
        return POOL_ADMIN


class FileAuth:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._users: dict[str, tuple[str, str]] = {}
        self._dummy = hash_password(secrets.token_hex(8))
        self._reload()

    def _reload(self) -> None:
        mtime = self.path.stat().st_mtime if self.path.exists() else None
        if mtime != self._mtime:
            self._users = read_password_file(self.path)
            self._mtime = mtime

    async def authenticate(self, user: str, password: str) -> str | None:
        self._reload()
        role, stored = self._users.get(user, (None, self._dummy))  # same work for unknown users
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, password, stored)
        return role if ok and role is not None else None

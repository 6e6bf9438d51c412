"""Principals, bearer tokens and who may touch which contract.

A token is shown once and stored only as its SHA-256, so a leaked database does not leak
credentials. Visibility is by owner: a caller sees its owner's contracts and nothing else
(another owner's contract answers exactly like a missing one), except `admin`, who sees all.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.errors import ValidationFailed
from app.models import ApiToken, Principal, utcnow

TOKEN_PREFIX = "mk_"


class Role(StrEnum):
    USER = "user"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    principal_id: uuid.UUID
    owner_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_access(self, owner_id: str) -> bool:
        return self.is_admin or owner_id == self.owner_id

    def to_json(self) -> dict[str, str]:
        return {"principalId": str(self.principal_id), "ownerId": self.owner_id, "role": self.role.value}


class Unauthenticated(Exception):
    """No token, or one we do not know: the edge answers 401."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationFailed(
            f"'{raw}' is not a role. Roles: {allowed}.", details={"validRoles": [r.value for r in Role]}
        ) from None


def create_token(session: Session, owner_id: str, role: Role, name: str | None = None) -> str:
    """Create a principal with one token; returns the token, which is not stored anywhere."""
    if not owner_id.strip():
        raise ValidationFailed("An owner id is required.", missing=["owner"])
    principal = Principal(owner_id=owner_id, role=role.value, name=name, created_at=utcnow())
    session.add(principal)
    session.flush()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(principal_id=principal.id, token_hash=hash_token(token), created_at=utcnow()))
    return token


# How long a principal looked up by token or id is trusted without asking the database again.
# It is the bound on how late a revocation takes effect, in the HTTP front and in workers.
PRINCIPAL_CACHE_SECONDS: Final = 5.0


class _TTLCache:
    """A small time-bounded cache (per process); entries older than the bound are reloaded."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._entries: dict[object, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: object) -> tuple[bool, Caller | None]:
        with self._lock:
            hit = self._entries.get(key)
        if hit is None or time.monotonic() - hit[0] > self.ttl:
            return False, None
        return True, hit[1]

    def put(self, key: object, caller: Caller | None) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), caller)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_by_token = _TTLCache(PRINCIPAL_CACHE_SECONDS)
_by_id = _TTLCache(PRINCIPAL_CACHE_SECONDS)


def forget_cached_principals() -> None:
    """Drop every cached principal of this process (tests, and after a local revocation)."""
    _by_token.clear()
    _by_id.clear()


def authenticate(session: Session, token: str | None) -> Caller:
    """The caller a bearer token stands for; cached for `PRINCIPAL_CACHE_SECONDS`."""
    if not token:
        raise Unauthenticated("A bearer token is required: send 'Authorization: Bearer <token>'.")
    digest = hash_token(token)
    found, caller = _by_token.get(digest)
    if not found:
        caller = _lookup_token(session, digest)
        _by_token.put(digest, caller)
    if caller is None:
        raise Unauthenticated("The bearer token is not valid; create one with 'makima token create'.")
    return caller


def _lookup_token(session: Session, digest: str) -> Caller | None:
    row = session.execute(
        select(Principal.id, Principal.owner_id, Principal.role)
        .join(ApiToken, ApiToken.principal_id == Principal.id)
        .where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    return None if row is None else Caller(row.id, row.owner_id, Role(row.role))


def load_caller(session: Session, principal_id: uuid.UUID) -> Caller | None:
    """The principal a broker message names, as it is now (a deleted one acts for nobody).

    Cached for `PRINCIPAL_CACHE_SECONDS`, so a worker does not pay a query per message.
    """
    found, caller = _by_id.get(principal_id)
    if found:
        return caller
    principal = session.get(Principal, principal_id)
    caller = None if principal is None else Caller(principal.id, principal.owner_id, Role(principal.role))
    _by_id.put(principal_id, caller)
    return caller


__all__ = [
    "Caller",
    "Role",
    "Unauthenticated",
    "authenticate",
    "create_token",
    "forget_cached_principals",
    "hash_token",
    "load_caller",
    "parse_role",
]

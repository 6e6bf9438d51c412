"""Principals, bearer tokens and who may touch which contract.

A token is shown once and stored only as its SHA-256, so a leaked database does not leak
credentials. Visibility is by owner: a caller sees its owner's contracts and nothing else
(another owner's contract answers exactly like a missing one), except `admin`, who sees all.

Tokens have a lifecycle: an operator lists and revokes them (`makima token list|revoke`), a
token may be created with an expiry, and its last use is recorded. A *principal* is valid
while it has at least one live token (neither revoked nor expired): that is what a worker
checks when it applies a message the principal sent, so revoking every token of a daemon
also stops the messages it queued. Each process caches what it looked up for
`PRINCIPAL_CACHE_SECONDS`, the stated bound on how late a revocation takes effect; an expiry
is honoured exactly, because the cached entry carries it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from app.domain.control_characters import ONE_LINE_RULE, one_line_problem
from app.domain.errors import ValidationFailed
from app.domain.phase_change import CONFIRMING_ROLES
from app.models import ApiToken, Principal, utcnow

TOKEN_PREFIX = "mk_"

# Column sizes of `principals` (app.models): checked before the database sees a value, so a
# too-long owner is a sentence to act on, not a database error.
MAX_OWNER_LENGTH: Final = 200
MAX_NAME_LENGTH: Final = 200

# The longest `--expires` we accept: far enough for any real use, short of date overflow.
MAX_LIFETIME: Final = timedelta(days=3650)

# Last use is written at most this often per token: a token used 100 times a second costs
# one UPDATE a minute, and only on a cache miss (see `authenticate`).
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)


class Role(StrEnum):
    USER = "user"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


# The roles that stand for a person: only they may lift a phase guard or answer a question
# (a supervisor is a daemon; the guard exists so that a person decides). The domain names
# them (`CONFIRMING_ROLES`) in its refusal; this is the same list as roles.
PERSON_ROLES: Final = tuple(Role(r) for r in CONFIRMING_ROLES)


@dataclass(frozen=True, slots=True)
class Caller:
    principal_id: uuid.UUID
    owner_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def is_person(self) -> bool:
        """A `user` or `admin`: whose confirmation lifts a phase guard (DESIGN "Who may do what")."""
        return self.role in PERSON_ROLES

    def may_access(self, owner_id: str) -> bool:
        return self.is_admin or owner_id == self.owner_id

    def to_json(self) -> dict[str, str]:
        return {"principalId": str(self.principal_id), "ownerId": self.owner_id, "role": self.role.value}


class Unauthenticated(Exception):
    """No token, or one we do not know, revoked or expired: the edge answers 401."""


class InvalidPrincipal(Exception):
    """A principal that may no longer act: it does not exist, or it has no live token."""


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


_LIFETIME = re.compile(r"^\s*(\d{1,9})\s*([mhd])\s*$")
_LIFETIME_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def parse_lifetime(raw: str) -> timedelta:
    """`90m`, `12h`, `30d` → how long a new token lives (`makima token create --expires`)."""
    match = _LIFETIME.match(raw)
    lifetime = timedelta(**{_LIFETIME_UNITS[match.group(2)]: int(match.group(1))}) if match else None
    if lifetime is None or not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise ValidationFailed(
            f"'{raw}' is not a token lifetime: give a whole number then m, h or d, like 90m, 12h or "
            f"30d (at most {MAX_LIFETIME.days}d).",
            details={"field": "expires", "given": raw, "units": list(_LIFETIME_UNITS)},
        )
    return lifetime


def check_principal_fields(owner_id: str, name: str | None) -> None:
    """Refuse what `principals` cannot store, or would show other than stored, before anything
    touches the database.

    An owner and a name are shown as typed (`makima token list`, the CLI's own lines, an
    owner's contracts, logs), so they follow the one-line rule the HTTP front holds names to
    (`app.domain.control_characters`): a control character forges a line or repaints a
    terminal, and a bidirectional control (U+202E) makes "team-a" and another owner read alike.
    """
    if not owner_id.strip():
        raise ValidationFailed("An owner id is required.", missing=["owner"])
    for field, value, limit in (("owner", owner_id, MAX_OWNER_LENGTH), ("name", name, MAX_NAME_LENGTH)):
        if value is None:
            continue
        if len(value) > limit:
            raise ValidationFailed(
                f"The {field} may have at most {limit} characters; this one has {len(value)}.",
                details={"field": field, "maxLength": limit, "length": len(value)},
            )
        problem = one_line_problem(value)
        if problem is not None:
            raise ValidationFailed(
                f"The {field} {problem}: a token's {field} is shown as typed, on one line, so it "
                f"holds {ONE_LINE_RULE}.",
                details={"field": field},
            )


def create_token(
    session: Session,
    owner_id: str,
    role: Role,
    name: str | None = None,
    *,
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> str:
    """Create a principal with one token; returns the token, which is not stored anywhere.

    `expires_in` makes the token stop working that long after `now` (401, "expired").
    """
    check_principal_fields(owner_id, name)
    now = now or utcnow()
    principal = Principal(owner_id=owner_id, role=role.value, name=name, created_at=now)
    session.add(principal)
    session.flush()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            principal_id=principal.id,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
    )
    return token


# --- listing and revoking -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What an operator may see of a token: everything but its secret (and its hash)."""

    id: uuid.UUID
    principal_id: uuid.UUID
    owner_id: str
    role: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "live"

    def to_json(self, now: datetime) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "principalId": str(self.principal_id),
            "owner": self.owner_id,
            "role": self.role,
            "name": self.name,
            "createdAt": iso(self.created_at),
            "lastUsedAt": iso(self.last_used_at),
            "expiresAt": iso(self.expires_at),
            "revokedAt": iso(self.revoked_at),
            "state": self.state(now),
        }


_TOKEN_INFO = (
    ApiToken.id,
    ApiToken.principal_id,
    Principal.owner_id,
    Principal.role,
    Principal.name,
    ApiToken.created_at,
    ApiToken.last_used_at,
    ApiToken.expires_at,
    ApiToken.revoked_at,
)


def list_tokens(session: Session, owner_id: str | None = None) -> list[TokenInfo]:
    """Every token (revoked and expired ones too), newest first; one owner's if named."""
    query = select(*_TOKEN_INFO).join(Principal, Principal.id == ApiToken.principal_id)
    if owner_id is not None:
        query = query.where(Principal.owner_id == owner_id)
    rows = session.execute(query.order_by(ApiToken.created_at.desc(), ApiToken.id))
    return [TokenInfo(*row) for row in rows]


def find_token(session: Session, token_id: uuid.UUID) -> TokenInfo | None:
    row = session.execute(
        select(*_TOKEN_INFO)
        .join(Principal, Principal.id == ApiToken.principal_id)
        .where(ApiToken.id == token_id)
    ).first()
    return None if row is None else TokenInfo(*row)


def revoke_token(
    session: Session, token_id: uuid.UUID, now: datetime | None = None
) -> tuple[TokenInfo, bool] | None:
    """Revoke a token; idempotent. Returns the token as it now is and whether this call revoked
    it (False: it already was, and its first revocation time stands), or None if unknown.

    Other processes notice within `PRINCIPAL_CACHE_SECONDS`; this one at once.
    """
    now = now or utcnow()
    changed = session.execute(
        update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    found = find_token(session, token_id)
    if found is None:
        return None
    forget_cached_principals()
    return found, bool(getattr(changed, "rowcount", 0))


# --- the per-process cache ------------------------------------------------------------------

# How long a principal looked up by token or id is trusted without asking the database again.
# It is the bound on how late a revocation takes effect, in the HTTP front and in workers.
PRINCIPAL_CACHE_SECONDS: Final = 5.0

V = TypeVar("V")


class _TTLCache(Generic[V]):
    """A small time-bounded cache (per process); entries older than the bound are reloaded."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._entries: dict[object, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: object) -> tuple[bool, V | None]:
        with self._lock:
            hit = self._entries.get(key)
        if hit is None or time.monotonic() - hit[0] > self.ttl:
            return False, None
        return True, hit[1]

    def put(self, key: object, value: V) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True, slots=True)
class _TokenStanding:
    """What one lookup learnt of a token; the expiry travels with it, so a cached entry
    stops working the moment the token expires, not up to the cache bound later."""

    caller: Caller
    token_id: uuid.UUID
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class _PrincipalStanding:
    """A principal and until when it has a live token (`None`: one that never expires)."""

    caller: Caller
    has_live_token: bool
    live_until: datetime | None


_by_token: _TTLCache[_TokenStanding | None] = _TTLCache(PRINCIPAL_CACHE_SECONDS)
_by_id: _TTLCache[_PrincipalStanding | None] = _TTLCache(PRINCIPAL_CACHE_SECONDS)


def forget_cached_principals() -> None:
    """Drop every cached principal of this process (tests, and after a local revocation)."""
    _by_token.clear()
    _by_id.clear()


# --- who is calling -------------------------------------------------------------------------


def authenticate(session: Session, token: str | None) -> Caller:
    """The caller a bearer token stands for; cached for `PRINCIPAL_CACHE_SECONDS`.

    A revoked token is refused within that bound, an expired one at once. The token's last
    use is written only on a cache miss, and only when the stored one is a minute old, so the
    hot path (a cached token) runs no statement at all.
    """
    if not token:
        raise Unauthenticated("A bearer token is required: send 'Authorization: Bearer <token>'.")
    digest = hash_token(token)
    cached, standing = _by_token.get(digest)
    if not cached:
        standing = _lookup_token(session, digest)
        _by_token.put(digest, standing)
    now = utcnow()
    caller = _judged(standing, now)  # raises for None: the test below only narrows the type
    if not cached and standing is not None:
        last_used = standing.last_used_at
        if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
            _record_use(session, standing.token_id, now)
    return caller


def cached_caller(token: str | None) -> Caller | None:
    """`authenticate` answered from its cache alone: None when it needs the database (no token,
    or one not cached); raises as `authenticate` would for a cached refusal. Lets the HTTP front
    resolve most requests' caller without a session or a hop to a worker thread."""
    if not token:
        return None
    cached, standing = _by_token.get(hash_token(token))
    if not cached:
        return None
    return _judged(standing, utcnow())


def reauthenticate(session: Session, token: str) -> Caller:
    """`authenticate` asked of the database, not the cache (which it refreshes): for a
    connection that stays open on one token, checked again each `PRINCIPAL_CACHE_SECONDS` or
    sooner, so a revocation ends it within that bound like any request (a cached answer could
    be that old already)."""
    digest = hash_token(token)
    standing = _lookup_token(session, digest)
    _by_token.put(digest, standing)
    return _judged(standing, utcnow())


def _judged(standing: _TokenStanding | None, now: datetime) -> Caller:
    """The caller a looked-up (or cached) token stands for, or Unauthenticated saying why not."""
    if standing is None:
        raise Unauthenticated("The bearer token is not valid; create one with 'makima token create'.")
    if standing.revoked_at is not None:
        raise Unauthenticated(
            f"The bearer token was revoked at {standing.revoked_at.isoformat(timespec='seconds')}; "
            "ask an operator for a new one ('makima token create')."
        )
    if standing.expires_at is not None and standing.expires_at <= now:
        raise Unauthenticated(
            f"The bearer token expired at {standing.expires_at.isoformat(timespec='seconds')}; "
            "ask an operator for a new one ('makima token create')."
        )
    return standing.caller


def _lookup_token(session: Session, digest: str) -> _TokenStanding | None:
    row = session.execute(
        select(
            Principal.id,
            Principal.owner_id,
            Principal.role,
            ApiToken.id.label("token_id"),
            ApiToken.revoked_at,
            ApiToken.expires_at,
            ApiToken.last_used_at,
        )
        .join(ApiToken, ApiToken.principal_id == Principal.id)
        .where(ApiToken.token_hash == digest)
    ).first()
    if row is None:
        return None
    return _TokenStanding(
        Caller(row.id, row.owner_id, Role(row.role)),
        row.token_id,
        row.revoked_at,
        row.expires_at,
        row.last_used_at,
    )


def _record_use(session: Session, token_id: uuid.UUID, now: datetime) -> None:
    """One guarded UPDATE: of several processes that decide to record the same minute, one writes."""
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
    )


def check_principal(session: Session, principal_id: uuid.UUID) -> Caller:
    """The principal a broker message names, if it may still act; else `InvalidPrincipal`.

    Valid means it exists and has at least one live token (not revoked, not expired), so a
    message queued by a daemon whose tokens were all revoked since is not applied. Cached for
    `PRINCIPAL_CACHE_SECONDS`, so a worker does not pay a query per message; the cached
    entry carries the latest expiry of the live tokens and is refused once that has passed.
    """
    cached, standing = _by_id.get(principal_id)
    if not cached:
        standing = _lookup_principal(session, principal_id)
        _by_id.put(principal_id, standing)
    if standing is None:
        raise InvalidPrincipal(f"principal {principal_id} does not exist")
    live = standing.has_live_token and (standing.live_until is None or utcnow() < standing.live_until)
    if not live:
        raise InvalidPrincipal(
            f"principal {principal_id} ({standing.caller.role.value} of owner '{standing.caller.owner_id}') "
            "has no live token: all its tokens were revoked or expired"
        )
    return standing.caller


def cached_principal(principal_id: uuid.UUID) -> Caller | None:
    """`check_principal` answered from its cache alone, or None when it would need the database
    or would refuse (a path without a session then takes the one that has one, which decides)."""
    cached, standing = _by_id.get(principal_id)
    if not cached or standing is None or not standing.has_live_token:
        return None
    if standing.live_until is not None and utcnow() >= standing.live_until:
        return None
    return standing.caller


def _lookup_principal(session: Session, principal_id: uuid.UUID) -> _PrincipalStanding | None:
    now = utcnow()
    live_token = and_(
        ApiToken.principal_id == Principal.id,
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
    )
    rows = session.execute(
        select(
            Principal.id,
            Principal.owner_id,
            Principal.role,
            ApiToken.id.label("token_id"),
            ApiToken.expires_at,
        )
        .outerjoin(ApiToken, live_token)
        .where(Principal.id == principal_id)
    ).all()
    if not rows:
        return None
    first = rows[0]
    caller = Caller(first.id, first.owner_id, Role(first.role))
    live = [r for r in rows if r.token_id is not None]
    if not live:
        return _PrincipalStanding(caller, has_live_token=False, live_until=None)
    expiries = [r.expires_at for r in live]
    until = None if any(e is None for e in expiries) else max(e for e in expiries if e is not None)
    return _PrincipalStanding(caller, has_live_token=True, live_until=until)


def load_caller(session: Session, principal_id: uuid.UUID) -> Caller | None:
    """The principal as it may act now, or None (missing, or no live token); see `check_principal`."""
    try:
        return check_principal(session, principal_id)
    except InvalidPrincipal:
        return None


__all__ = [
    "LAST_USED_RESOLUTION",
    "MAX_NAME_LENGTH",
    "MAX_OWNER_LENGTH",
    "PERSON_ROLES",
    "PRINCIPAL_CACHE_SECONDS",
    "Caller",
    "InvalidPrincipal",
    "Role",
    "TokenInfo",
    "Unauthenticated",
    "authenticate",
    "cached_principal",
    "check_principal",
    "check_principal_fields",
    "create_token",
    "find_token",
    "forget_cached_principals",
    "hash_token",
    "list_tokens",
    "load_caller",
    "parse_lifetime",
    "parse_role",
    "reauthenticate",
    "revoke_token",
]

"""Principals, bearer tokens and who may touch which contract.

A token is shown once and stored only as its SHA-256, so a leaked database does not leak
credentials. Visibility is by owner: a caller sees its owner's contracts and nothing else
(another owner's contract answers exactly like a missing one), except `admin`, who sees all.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

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


def authenticate(session: Session, token: str | None) -> Caller:
    if not token:
        raise Unauthenticated("A bearer token is required: send 'Authorization: Bearer <token>'.")
    row = session.execute(
        select(Principal.id, Principal.owner_id, Principal.role)
        .join(ApiToken, ApiToken.principal_id == Principal.id)
        .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        raise Unauthenticated("The bearer token is not valid; create one with 'makima token create'.")
    return Caller(row.id, row.owner_id, Role(row.role))


def load_caller(session: Session, principal_id: uuid.UUID) -> Caller | None:
    """The principal a broker message names, as it is now (a deleted one acts for nobody)."""
    principal = session.get(Principal, principal_id)
    if principal is None:
        return None
    return Caller(principal.id, principal.owner_id, Role(principal.role))


__all__ = [
    "Caller",
    "Role",
    "Unauthenticated",
    "authenticate",
    "create_token",
    "hash_token",
    "load_caller",
    "parse_role",
]

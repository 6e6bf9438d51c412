"""Routes for worktrees (filled in by the issue-11 work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()

__all__ = ["router"]

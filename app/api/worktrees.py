"""Worktrees as `ContractsAPI` serves them: a contract's worktrees, and the cleanup that asks
daemons to remove the orphaned ones (`app.worktrees`).

Why reports are elsewhere: a worktree created or removed is a daemon's report, enqueued like
the others (`app.api.reports`); here are the reads and the admin's cleanup, answered now.
"""

from __future__ import annotations

import uuid

from app import batch
from app import worktrees as worktree_service
from app.api.base import APIBase
from app.domain.errors import ValidationFailed


class WorktreesMixin(APIBase):
    """Read a contract's worktrees; ask for orphaned ones to be removed."""

    def worktrees(self, contract_id: uuid.UUID) -> worktree_service.WorktreeList:
        """A contract's worktrees (open, released, removed) and their counts."""
        with self._uow() as uow:
            return worktree_service.contract_worktrees(uow.session, self.caller, contract_id)

    def cleanup_worktrees(
        self, *, dry_run: bool = False, limit: int = 1000
    ) -> worktree_service.WorktreeCleanup:
        """Ask the daemons of orphaned worktrees (closed contracts, not reported removed) to
        remove them, at most once per `[worktrees] cleanup_interval_seconds` each; admins only.
        A dry run answers what would be asked and changes nothing."""
        batch.require_admin(self.caller, "clean up worktrees")
        if not 1 <= limit <= worktree_service.MAX_CLEANUP:
            raise ValidationFailed(
                f"limit is 1 to {worktree_service.MAX_CLEANUP} (got {limit}).",
                details={"field": "limit", "limit": worktree_service.MAX_CLEANUP},
            )
        interval = worktree_service.cleanup_interval(self._settings)
        with self._uow() as uow:
            now = self._clock()
            if dry_run:  # one more than the limit tells whether more are due
                asked = worktree_service.ask_orphans(uow, now, interval, limit + 1, dry_run=True)
                more, asked = len(asked) > limit, asked[:limit]
            else:
                asked = worktree_service.ask_orphans(uow, now, interval, limit)
                more = worktree_service.any_orphans_due(uow.session, now, interval)
            return worktree_service.cleanup_report(asked, dry_run=dry_run, more=more, interval=interval)

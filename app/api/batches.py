"""Batch operations and the deletion audit as `ContractsAPI` serves them (admins only; `app.batch`,
`app.deletion_audit`).

Why the API answers at once: a real run goes to the `batch` queue after commit and is read
back with `batch_status`; only a dry run is judged here, so no caller waits on a batch.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import batch, deletion_audit
from app.api.base import APIBase, check_range
from app.domain.uuids import id_argument


class BatchesMixin(APIBase):
    """Start a batch operation, read batches back, read the deletion audit."""

    def start_batch(
        self,
        operation: str,
        parameters: dict[str, Any],
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[batch.BatchView, bool]:
        """Accept a batch operation; returns (the batch, whether it is new).

        A real run is queued on the `batch` queue after commit and answered at once (progress
        via `batch_status`); a dry run is judged now and comes back completed, with what would
        be affected. The same `idempotency_key` returns the batch it started.
        """
        try:
            with self._uow() as uow:
                row, created = batch.start_batch(
                    uow,
                    self.caller,
                    operation,
                    parameters,
                    dry_run=dry_run,
                    idempotency_key=idempotency_key,
                    now=self._clock(),
                )
                return batch.batch_view(uow.session, row), created
        except IntegrityError:
            # Two requests with one Idempotency-Key at once: the other one's batch is the answer.
            if idempotency_key is None:
                raise
            with self._uow() as uow:
                existing = batch.find_by_key(uow.session, self.caller, idempotency_key)
                if existing is None:
                    raise
                return batch.batch_view(uow.session, existing), False

    def batch_status(self, batch_id: uuid.UUID) -> batch.BatchView | None:
        with self._uow() as uow:
            return batch.get_batch(uow.session, self.caller, batch_id)

    def list_batches(self, limit: int = 20) -> batch.BatchList:
        """The caller's batches, newest first, at most `limit` (1 to 100, as over HTTP)."""
        check_range("limit", limit, 1, 100)
        with self._uow() as uow:
            return batch.list_batches(uow.session, self.caller, limit)

    def deletions(
        self, *, limit: int = 100, before: int | None = None, batch_id: uuid.UUID | None = None
    ) -> deletion_audit.DeletionPage:
        """The deletion audit, newest first (admin): `limit` 1 to 500 and `before` (a cursor) 1
        to 2**62, as over HTTP."""
        check_range("limit", limit, 1, deletion_audit.MAX_PAGE)
        if before is not None:
            check_range("before", before, 1, 2**62)
        if batch_id is not None:
            batch_id = id_argument(batch_id, "batchId")
        with self._uow() as uow:
            batch.require_admin(self.caller, "read the deletion audit")
            return deletion_audit.list_deletions(uow.session, limit=limit, before=before, batch_id=batch_id)

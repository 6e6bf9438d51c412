"""Supervisors as `ContractsAPI` serves them: heartbeats in, status and history out, the saved
state, restoration, restart and the sync request (`app.heartbeat_buffer`, `app.supervisors`,
`app.state_saves`, `app.state_reads`, `app.history_reads`, `app.restoration`).

Why together: every one of these answers FEATURE_DISABLED while `supervisor_heartbeat` is off,
and each names a supervisor by its contract, task and incarnation.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from app import heartbeat_buffer, history_reads, restoration, state_reads, state_saves, supervisors
from app.api.base import APIBase, check_range
from app.domain.heartbeat_wire import heartbeat_wire
from app.domain.heartbeats import InvalidHeartbeat
from app.domain.state_saves import parse_save


class SupervisorsMixin(APIBase):
    """A contract's supervisor: its heartbeats, its saved state, its restoration and restart."""

    # -- supervisor heartbeats (app.heartbeat_buffer, app.supervisors) -------------------

    def send_heartbeat(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        state: str,
        phase: str,
        *,
        current_activity: str = "",
        progress: int = 0,
        pending_task_ids: Sequence[uuid.UUID] = (),
        timestamp: datetime | None = None,
        heartbeat_id: uuid.UUID | None = None,
        incarnation: int | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
    ) -> uuid.UUID:
        """Buffer one supervisor heartbeat; returns its id at once, never waits for a worker.

        Checked now (a bad field is VALIDATION_FAILED naming it, an invisible contract
        CONTRACT_NOT_FOUND), then sent with others as one list: every
        `[heartbeats] batch_size` heartbeats or `flush_ms` milliseconds, at exit, and on
        `flush()`. Without `heartbeat_id` the id is derived from the task and timestamp, so
        sending the same heartbeat again stores it once.
        """
        heartbeat_buffer.require_enabled(self._settings)
        try:
            item = heartbeat_wire(
                task_id,
                contract_id,
                state,
                phase,
                current_activity=current_activity,
                progress=progress,
                pending_task_ids=pending_task_ids,
                timestamp=self._clock() if timestamp is None else timestamp,
                heartbeat_id=heartbeat_id,
                incarnation=incarnation,
                daemon_id=daemon_id,
                host=host,
            )
        except InvalidHeartbeat as exc:
            raise heartbeat_buffer.invalid(exc) from None
        heartbeat_buffer.send_wire(self.caller, self._engine, self._settings, self._send, item)
        return heartbeat_id if type(heartbeat_id) is uuid.UUID else uuid.UUID(item["id"])

    def flush(self) -> int:
        """Send the heartbeats this process buffered now; returns how many left."""
        heartbeat_buffer.require_enabled(self._settings)
        return heartbeat_buffer.buffer_for(self._send, self._settings).flush()

    def supervisor_status(self, contract_id: uuid.UUID) -> supervisors.SupervisorStatus:
        """The supervisor's newest state, incarnation, and whether it is alive (by receive time)."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return supervisors.supervisor_status(
                uow.session, self.caller, contract_id, self._clock(), self._heartbeat_timeout()
            )

    def supervisor_heartbeats(
        self, contract_id: uuid.UUID, limit: int = supervisors.HEARTBEATS_PAGE
    ) -> supervisors.HeartbeatList:
        """The contract's heartbeats of the last 24 hours, newest first: at most `limit` (1 to
        1000, the HTTP endpoint's bounds; outside them VALIDATION_FAILED, not a database error)."""
        heartbeat_buffer.require_enabled(self._settings)
        check_range("limit", limit, 1, supervisors.MAX_HEARTBEATS_PAGE)
        with self._uow() as uow:
            return supervisors.heartbeat_history(uow.session, self.caller, contract_id, limit, self._clock())

    # -- supervisor state, restoration and restart (app.state_saves, app.restoration) --

    def save_supervisor_state(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        *,
        state_version: int,
        state: str,
        phase: str,
        current_activity: str = "",
        progress: int | None = None,
        error: str | None = None,
        spawned_task_ids: Sequence[uuid.UUID | str] = (),
        waiting_on_task_ids: Sequence[uuid.UUID | str] = (),
        incarnation: int | None = None,
        history_from: int | None = None,
        history_append: Sequence[Mapping[str, Any]] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
    ) -> state_saves.StateSaved:
        """Save the supervisor's persistent state now (one short transaction; a supervisor's or
        admin's call). Ordered by (incarnation, state_version): an older save is STALE_STATE, an
        older incarnation SUPERVISOR_FENCED, the stored one sent again answers `applied=False`.
        Pass the `incarnation` a restoration or restart issued: without it a save is accepted only
        while incarnation 1 is in force (else SUPERVISOR_FENCED), and one above the incarnation in
        force is INCARNATION_NOT_ISSUED.
        `history_append` messages are `{role, content, name?, toolCallId?, at?}`, appended at
        `history_from` (default: the stored end; HISTORY_GAP past it); `checkpoint` is
        `{id, note?}` and marks this save as a consistent point."""
        heartbeat_buffer.require_enabled(self._settings)
        raw: dict[str, Any] = {
            "taskId": str(task_id),
            "stateVersion": state_version,
            "state": state,
            "phase": phase,
            "currentActivity": current_activity,
            "progress": progress,
            "error": error,
            "spawnedTaskIds": [str(t) for t in spawned_task_ids],
            "waitingOnTaskIds": [str(t) for t in waiting_on_task_ids],
            "incarnation": incarnation,
            "historyFrom": history_from,
            "historyAppend": list(history_append) if history_append is not None else None,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
            "daemonId": daemon_id,
            "host": host,
        }
        save = parse_save({k: v for k, v in raw.items() if v is not None})
        with self._uow() as uow:
            return state_saves.save_state(uow, self.caller, contract_id, save, self._clock())

    def supervisor_state(
        self, contract_id: uuid.UUID, task_id: uuid.UUID | None = None
    ) -> state_reads.SupervisorStateView:
        """The stored state (`task_id`'s, or the most recently saved one); SUPERVISOR_NOT_FOUND if none."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return state_reads.read_state(uow.session, self.caller, contract_id, task_id)

    def supervisor_history(
        self, contract_id: uuid.UUID, task_id: uuid.UUID | None = None, start: int = 0, limit: int = 200
    ) -> history_reads.HistoryPage:
        """A page of the stored conversation from position `start` (at most `limit`, ≤ 1000)."""
        heartbeat_buffer.require_enabled(self._settings)
        check_range("from", start, 0, 2**31 - 1)
        check_range("limit", limit, 1, history_reads.MAX_HISTORY_PAGE)
        with self._uow() as uow:
            return history_reads.read_history(uow.session, self.caller, contract_id, task_id, start, limit)

    def restore_supervisor(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
        *,
        history_limit: int = 200,
    ) -> restoration.Restoration:
        """What a restarted daemon needs (seed 3.6): the branch taken, the restored state and
        history, open questions, answers, waited-on tasks, the next step and a context text.
        A supervisor's call claims the supervisor and answers its new incarnation; a user's or
        admin's is a read-only preview."""
        heartbeat_buffer.require_enabled(self._settings)
        check_range("historyLimit", history_limit, 1, restoration.MAX_HISTORY_LIMIT)
        with self._uow() as uow:
            return restoration.restore(
                uow,
                self.caller,
                contract_id,
                self._clock(),
                task_id=task_id,
                daemon_id=daemon_id,
                host=host,
                history_limit=history_limit,
            )

    def restart_supervisor(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID | None = None,
        *,
        reason: str | None = None,
        incarnation: int | None = None,
    ) -> restoration.RestartRequested:
        """Restart the supervisor (a user's or admin's call): a new incarnation fences the running
        one and a `restart_supervisor` command goes to its daemon. Pass the `incarnation` you
        mean to replace to make a retry safe."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return restoration.restart(
                uow,
                self.caller,
                contract_id,
                self._clock(),
                task_id=task_id,
                reason=reason,
                incarnation=incarnation,
            )

    def request_supervisor_sync(self, contract_id: uuid.UUID) -> supervisors.SyncRequested:
        """Ask the live supervisor's daemon for its full state (SUPERVISOR_DEAD if it is not live)."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return supervisors.request_sync(
                uow, self.caller, contract_id, self._clock(), self._heartbeat_timeout()
            )

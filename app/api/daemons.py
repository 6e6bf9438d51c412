"""Daemons as `ContractsAPI` serves them: the daemons seen in heartbeats, and each one's
commands, read as a feed or from its broker queue (`app.daemons`, `app.daemon_commands`).

Why a daemon is named with its owner: daemon ids are not unique across owners, so a daemon
reads only the commands its owner's contracts send it.
"""

from __future__ import annotations

from app import daemon_commands as command_service
from app import daemons as daemon_list
from app import heartbeat_buffer
from app.api.base import APIBase, check_range
from app.domain.errors import ValidationFailed


class DaemonsMixin(APIBase):
    """The daemons a caller's contracts have seen, and the commands each one is sent."""

    def daemons(self, limit: int = daemon_list.DAEMONS_PAGE, cursor: int = 0) -> daemon_list.DaemonList:
        """The daemons seen in heartbeats of this caller's contracts, alive or not: `limit` (≤ 1000)
        of them from `cursor` (pass the answer's `next_cursor` to read on)."""
        heartbeat_buffer.require_enabled(self._settings)
        check_range("limit", limit, 1, daemon_list.MAX_DAEMONS_PAGE)
        check_range("cursor", cursor, 0, 2**31 - 1)
        with self._uow() as uow:
            return daemon_list.list_daemons(
                uow.session, self.caller, self._clock(), self._heartbeat_timeout(), limit, cursor
            )

    def daemon_commands(
        self, daemon_id: str, after: int = 0, limit: int = 100
    ) -> command_service.DaemonCommandFeed:
        """The commands for daemon `daemon_id` after command id `after` (its HTTP feed), of the
        contracts this caller may see; pass `next_after` back to read on. The same commands
        reach the daemon's broker queue (`daemon_queue`)."""
        command_service.check_daemon_id(daemon_id)
        if not 1 <= limit <= command_service.MAX_FEED:
            raise ValidationFailed(
                f"limit is 1 to {command_service.MAX_FEED} (got {limit}).",
                details={"field": "limit", "limit": command_service.MAX_FEED},
            )
        if after < 0:
            raise ValidationFailed(
                f"after is a command id, 0 or more (got {after}).", details={"field": "after"}
            )
        with self._uow() as uow:
            return command_service.read_feed(uow.session, self.caller, daemon_id, after, limit)

    def daemon_queue(self, daemon_id: str) -> command_service.DaemonQueue:
        """The broker queues this caller's owner's daemon `daemon_id` reads: its own (`queue`,
        `daemon.commands.<owner token>.<daemon key>`) and the owner's queue for commands that
        name no daemon (`owner_queue`). Daemon ids are not unique across owners, so a daemon
        reads only queues its owner's commands reach."""
        command_service.check_daemon_id(daemon_id)
        return command_service.queue_of(self.caller, daemon_id)

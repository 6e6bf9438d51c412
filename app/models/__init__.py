"""The shared schema: SQLAlchemy 2 typed models, identical on PostgreSQL and SQLite.

Alembic migrations under `app/migrations` create exactly these tables; a test compares the
two so they cannot drift. One module per table family, each name importable from here:

- `base`: `Base` and its naming convention, the column types, `utcnow`
- `principals`: principals and their API tokens
- `contracts`: a contract, its deliverables, tasks, events and worktrees
- `messages`: commands for daemons and the task outbox; processed messages, outcomes, dead letters
- `maintenance`: stale episodes, batch operations, the deletion audit, metric counters
- `supervisors`: supervisors, heartbeats and their counters, saved state, conversation, questions
- `server_only`: the columns and indexes PostgreSQL keeps that the models do not map

Importing this package imports every table module, so `Base.metadata` (what Alembic's env and
the schema tests read) holds every table whichever name a caller imports.
"""

from __future__ import annotations

from app.models.base import NAMING_CONVENTION, Base, EventId, JsonType, UTCDateTime, UuidList, utcnow
from app.models.contracts import CompletedDeliverable, Contract, ContractEvent, ContractTask, ContractWorktree
from app.models.maintenance import (
    BatchChunk,
    BatchItem,
    BatchOperationRow,
    DeletionAudit,
    MetricCounter,
    StaleEpisode,
)
from app.models.messages import (
    CLAIMED_BEFORE_SENDERS,
    DaemonCommand,
    DeadLetter,
    MessageOutcome,
    OutboxMessage,
    ProcessedMessage,
)
from app.models.principals import ApiToken, Principal
from app.models.server_only import SERVER_ONLY_COLUMNS, SERVER_ONLY_INDEXES
from app.models.supervisors import (
    ConversationMessage,
    HeartbeatCounter,
    Supervisor,
    SupervisorHeartbeat,
    SupervisorQuestion,
    SupervisorStateRow,
)

__all__ = [
    "CLAIMED_BEFORE_SENDERS",
    "NAMING_CONVENTION",
    "SERVER_ONLY_COLUMNS",
    "SERVER_ONLY_INDEXES",
    "ApiToken",
    "Base",
    "BatchChunk",
    "BatchItem",
    "BatchOperationRow",
    "CompletedDeliverable",
    "Contract",
    "ContractEvent",
    "ContractTask",
    "ContractWorktree",
    "ConversationMessage",
    "DaemonCommand",
    "DeadLetter",
    "DeletionAudit",
    "EventId",
    "HeartbeatCounter",
    "JsonType",
    "MessageOutcome",
    "MetricCounter",
    "OutboxMessage",
    "Principal",
    "ProcessedMessage",
    "StaleEpisode",
    "Supervisor",
    "SupervisorHeartbeat",
    "SupervisorQuestion",
    "SupervisorStateRow",
    "UTCDateTime",
    "UuidList",
    "utcnow",
]

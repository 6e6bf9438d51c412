"""The API module: the one entry point for every caller, with no web framework inside it.

A daemon constructs `ContractsAPI(token)` and calls it; the HTTP front does the same for
each request with the caller it authenticated. Reports a daemon must never block on
(`report_task_completed`, `mark_deliverable`, ...) are enqueued on the broker and return the
message id at once, after one short transaction that refuses what can be judged already
(an invisible or closed contract) and records the message as pending, so the sender can ask
what became of it (`message_status`) and send it again with the same id (`resend`).
Commands whose caller must see the answer now (create, change status,
change phase) run as one short guarded transaction here, with the same domain functions the
workers use, and dispatch their follow-ups only after commit.

    api = ContractsAPI("mk_...")
    api.report_task_completed(contract_id, task_id, "write tests", success=True)

Answers are the typed models of `app.schemas` (attribute access in Python, camelCase JSON
with `.model_dump(mode="json")`), the same classes the HTTP front publishes.

`ContractsAPI` is one class to its callers, composed of a mixin per concept:

    base.py         APIBase: the constructor, the caller (`whoami`), the unit of work, the enqueue path
    contracts.py    create, read, list and steer a contract; the completion check now
    reports.py      a daemon's reports, enqueued (tasks, deliverables, worktrees); message_status, resend
    batches.py      batch operations and the deletion audit (admins)
    supervisors.py  heartbeats, supervisor status, saved state, restoration, restart, sync
    daemons.py      the daemons seen, each one's command feed and queues
    worktrees.py    a contract's worktrees; the cleanup of orphans (admins)
    questions.py    questions a supervisor asks a person
"""

from app.api.base import MAX_MESSAGE_ID as MAX_MESSAGE_ID
from app.api.base import MESSAGE_ID as MESSAGE_ID
from app.api.base import APIBase
from app.api.batches import BatchesMixin
from app.api.contracts import ContractsMixin
from app.api.daemons import DaemonsMixin
from app.api.questions import QuestionsMixin
from app.api.reports import ReportsMixin
from app.api.supervisors import SupervisorsMixin
from app.api.worktrees import WorktreesMixin
from app.broker import Sender
from app.message_outcomes import MessageStatus


class ContractsAPI(
    ContractsMixin,
    ReportsMixin,
    BatchesMixin,
    SupervisorsMixin,
    DaemonsMixin,
    WorktreesMixin,
    QuestionsMixin,
    APIBase,
):
    """Everything a caller may do, on behalf of one authenticated principal."""


__all__ = ["ContractsAPI", "MessageStatus", "Sender"]

"""The API module, now a package: `ContractsAPI` is in `app.api.base` until it is split by concept."""

from app.api.base import ContractsAPI, MessageStatus, Sender

__all__ = ["ContractsAPI", "MessageStatus", "Sender"]

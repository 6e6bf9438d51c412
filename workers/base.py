"""The base of every task: bounded retries, a delivery count, and failures kept as dead letters.

- Transient errors (database or broker connection trouble) are retried with backoff, at
  most `max_retries` times.
- Anything else a task raises (a rejected message, a domain rule, a bug) is final for that
  message: it is written to `dead_letters` with the reason and acknowledged, and the
  sender's message outcome becomes `refused` with the error's code and message.
- Expected refusals (`MessageRejected`, a domain `ContractError`) are a sender's mistake,
  not ours: they are logged once as a WARNING without a traceback (Celery's own failure log
  is quietened through `throws`); anything unexpected keeps its traceback, at ERROR.
- A message redelivered because its worker died is counted; past `max_deliveries` it is
  parked instead of run, so a message that kills its worker cannot loop forever. Only
  redeliveries are counted (kombu flags a restored message `redelivered`): a first delivery
  costs no Redis round trip.
- Results are not stored: nobody reads them, and each would be one more Redis write.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import redis
from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import get_settings
from app.domain.errors import ContractError
from app.messages import MessageRejected
from workers.broker_redis import broker_key, broker_redis
from workers.dead_letter import park_task

log = logging.getLogger(__name__)

# Refusal codes beyond the domain's own (`ContractError.code`), as the sender sees them.
MESSAGE_REJECTED = "MESSAGE_REJECTED"
DELIVERY_LIMIT = "DELIVERY_LIMIT_EXCEEDED"
INTERNAL_ERROR = "INTERNAL_ERROR"

TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)


class AccountableTask(Task):  # type: ignore[misc]
    abstract = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5
    ignore_result = True
    throws = (MessageRejected, ContractError)

    def _delivery_key(self) -> str:
        return broker_key(f"deliveries:{self.request.id}:{self.request.retries or 0}")

    def _redelivered(self) -> bool:
        return bool(
            self.request.id
            and not self.request.is_eager
            and (self.request.delivery_info or {}).get("redelivered")
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._redelivered():
            key = self._delivery_key()
            with broker_redis().pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, 86400)
                redeliveries = int(pipe.execute()[0])
            deliveries, limit = redeliveries + 1, get_settings().max_deliveries
            if deliveries > limit:
                self._park(
                    args,
                    kwargs,
                    f"delivered {deliveries} times without finishing (limit {limit})",
                    code=DELIVERY_LIMIT,
                )
                return None
        return super().__call__(*args, **kwargs)

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if self._redelivered():
            broker_redis().delete(self._delivery_key())

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, ContractError):
            self._park(args, kwargs, f"{exc.code}: {exc}", code=exc.code)
        elif isinstance(exc, MessageRejected):
            self._park(args, kwargs, f"{MESSAGE_REJECTED}: {exc}", code=MESSAGE_REJECTED)
        else:
            reason = f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
            self._park(args, kwargs, reason, code=INTERNAL_ERROR, expected=False)

    def _park(self, args: Any, kwargs: Any, reason: str, *, code: str, expected: bool = True) -> None:
        delivery = self.request.delivery_info or {}
        park_task(
            self.name,
            delivery.get("routing_key"),
            self.request.id,
            args,
            kwargs,
            reason,
            error_code=code,
            expected=expected,
        )

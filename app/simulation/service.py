"""The running service as the simulator reaches it: one `httpx.AsyncClient`, bounded, patient.

Every call goes through `Service.call`, which behaves as a well-mannered daemon must:

- at most `concurrency` requests in flight, whatever the number of simulated supervisors;
- `503` with `Retry-After` (`BROKER_UNAVAILABLE`, `DATABASE_UNAVAILABLE`) waits that long and
  sends the same request again (the same ids, so it applies once), a bounded number of times;
- no answer (connection refused or reset, timeout) and `500` are retried with a backoff;
- any answer is counted by its code (`2xx`, or the error code, or `HTTP_<status>` when the body
  is not the service's error shape), with its latency, and never raises.

Endpoints still being built are expected: a route the service does not have (404 `NOT_FOUND`
or 405 `METHOD_NOT_ALLOWED`, never a resource's own not-found code) marks its feature missing,
prints one notice, and the fleet skips that behaviour; the feature is tried again after
`RECHECK_SECONDS`, so a service upgraded during a run is picked up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import httpx

from app.simulation.ledger import Kind, Ledger

API: Final = "/api/v1"
RECHECK_SECONDS: Final = 20.0
MAX_ATTEMPTS: Final = 6
MAX_RETRY_AFTER: Final = 10.0
NO_ANSWER: Final = "NO_ANSWER"
ROUTE_MISSING: Final = frozenset({"NOT_FOUND", "METHOD_NOT_ALLOWED"})
# 5xx answers that waiting will not change: said once, not resent.
FINAL_5XX: Final = frozenset({"FEATURE_DISABLED", "SUPERVISOR_DEAD"})


class Feature(StrEnum):
    """Behaviours that depend on endpoints which may not exist yet, with what they need."""

    STATES = "POST /api/v1/contracts/{id}/supervisor/state"
    RESTORATION = "GET /api/v1/contracts/{id}/supervisor/restoration"
    QUESTIONS = "POST /api/v1/contracts/{id}/questions"
    ANSWERS = "POST /api/v1/contracts/{id}/questions/{questionId}/answer"
    QUESTION_LIST = "GET /api/v1/contracts/{id}/questions"
    STATE_READ = "GET /api/v1/contracts/{id}/supervisor/state"
    COMMANDS = "GET /api/v1/daemons/{daemonId}/commands"


@dataclass(frozen=True, slots=True)
class Answer:
    """The service's answer to one call (after retries): status 0 when there was none."""

    status: int
    code: str | None  # None on 2xx
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def details(self) -> dict[str, Any]:
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, dict) and isinstance(error.get("details"), dict):
                return dict(error["details"])
        return {}

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", ""))
        return ""

    def field(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default) if isinstance(self.body, dict) else default


def error_code(status: int, body: Any) -> str | None:
    """The service's error code, or `HTTP_<status>` for a body of another shape."""
    if 200 <= status < 300:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        if isinstance(code, str) and code:
            return code
    return f"HTTP_{status}"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the service asked us to wait (`Retry-After` in seconds), capped; None if absent."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, min(float(raw), MAX_RETRY_AFTER))
    except ValueError:
        return 1.0


class Service:
    """Calls to one running service, counted in the ledger by kind."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        ledger: Ledger,
        *,
        concurrency: int,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.limit = asyncio.Semaphore(concurrency)
        self.say = say
        self.clock = clock
        self.missing: dict[Feature, float] = {}  # feature → when it was last found missing
        self.ever_missing: set[Feature] = set()
        self.ever_present: set[Feature] = set()

    # --- features ---------------------------------------------------------------------------

    def available(self, feature: Feature) -> bool:
        """False while a feature's route is known missing, for RECHECK_SECONDS at a time."""
        since = self.missing.get(feature)
        return since is None or self.clock() - since >= RECHECK_SECONDS

    def _note_route(self, feature: Feature | None, answer: Answer) -> None:
        if feature is None:
            return
        if answer.code in ROUTE_MISSING:
            if feature not in self.missing and feature not in self.ever_missing:
                self.say(
                    f"notice: the service has no {feature.value} yet ({answer.code}); the simulator "
                    f"skips what needs it and tries again every {RECHECK_SECONDS:g} s."
                )
            self.missing[feature] = self.clock()
            self.ever_missing.add(feature)
        elif answer.status:
            if feature in self.missing:
                self.say(f"notice: {feature.value} answers now; the simulator uses it.")
                del self.missing[feature]
            self.ever_present.add(feature)

    # --- calls ------------------------------------------------------------------------------

    async def call(
        self,
        kind: Kind | str,
        method: str,
        path: str,
        token: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        feature: Feature | None = None,
        attempts: int = MAX_ATTEMPTS,
    ) -> Answer:
        """One request, resent as is while the service asks for patience; never raises.

        Latency is measured from the moment the request leaves (not while it waits for a slot).
        """
        headers = {"Authorization": f"Bearer {token}"}
        stats = self.ledger.stats(str(kind))
        answer = Answer(0, NO_ANSWER, None)
        pause = 0.0
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(pause)
            backoff = min(0.5 * 2**attempt, 5.0)
            try:
                async with self.limit:
                    started = self.clock()
                    response = await self.client.request(
                        method, API + path, headers=headers, json=json, params=params
                    )
                    latency = (self.clock() - started) * 1000.0
            except httpx.HTTPError as exc:
                stats.record(NO_ANSWER, None)
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                answer = Answer(0, NO_ANSWER, {"error": {"code": NO_ANSWER, "message": problem}})
                pause = backoff
                continue
            try:
                body: Any = response.json() if response.content else None
            except ValueError:
                body = response.text
            code = error_code(response.status_code, body)
            stats.record(code or "2xx", latency)
            answer = Answer(response.status_code, code, body)
            wait = retry_after(response) if response.status_code == 503 else None
            if wait is not None:
                pause = wait
                continue
            if response.status_code >= 500 and code not in FINAL_5XX:
                pause = backoff
                continue
            break
        self._note_route(feature, answer)
        return answer


__all__ = [
    "API",
    "FINAL_5XX",
    "MAX_ATTEMPTS",
    "NO_ANSWER",
    "RECHECK_SECONDS",
    "ROUTE_MISSING",
    "Answer",
    "Feature",
    "Service",
    "error_code",
    "retry_after",
]

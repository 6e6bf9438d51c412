"""What the live monitor's two streams share: the feature switch, the app's hub, `after`.

Its own module so that neither stream's endpoint imports the other: the WebSocket
(`app.http.monitor_ws`) and the Server-Sent Events stream (`app.http.monitor_sse`) are two
fronts on one hub per app and event loop (`hub_of`; the hub is `app.monitor`), switched off
together by `[feature_flags] monitoring_dashboard` (`FLAG`; `require_monitoring` answers
FEATURE_DISABLED, for the SSE stream and the dashboard), and resume after the same kind of id:
an event id from 0 to the largest BIGINT (`parse_after`), refused naming the field it came in
(`after`, or SSE's `Last-Event-ID` header). Who a stream is for is `app.http.monitor_auth`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from app.config import get_settings
from app.db import get_engine
from app.domain.errors import FeatureDisabled
from app.monitor import Hub
from app.monitor_filter import FilterError

FLAG: Final = "monitoring_dashboard"
# Event ids are BIGINT: an `after` past the largest cannot name one (and the database refuses it).
MAX_EVENT_ID: Final = 2**63 - 1


def require_monitoring() -> None:
    """The `[feature_flags] monitoring_dashboard` switch: off answers FEATURE_DISABLED."""
    if not get_settings().feature_flags.monitoring_dashboard:
        raise FeatureDisabled(FLAG)


def hub_of(app: Any) -> Hub:
    """The app's hub on the running event loop (one reader per process and loop)."""
    loop = asyncio.get_running_loop()
    hub: Hub | None = getattr(app.state, "monitor_hub", None)
    if hub is None or getattr(app.state, "monitor_hub_loop", None) is not loop:
        wired = app.state.wiring
        hub = Hub(lambda: wired.engine or get_engine())
        app.state.monitor_hub = hub
        app.state.monitor_hub_loop = loop
    return hub


def parse_after(raw: Any, field: str = "after") -> int | None:
    """An event id to resume after: a whole number from 0 to MAX_EVENT_ID (a string of ASCII
    digits too, as the SSE header sends it); else FilterError naming `field`."""
    if raw is None:
        return None
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= 19:
        value = int(raw)
    if value is None or not 0 <= value <= MAX_EVENT_ID:
        problem = f"must be an event id: a whole number from 0 to {MAX_EVENT_ID}"
        raise FilterError([{"field": field, "problem": problem, "given": raw}])
    return value


__all__ = ["FLAG", "MAX_EVENT_ID", "hub_of", "parse_after", "require_monitoring"]

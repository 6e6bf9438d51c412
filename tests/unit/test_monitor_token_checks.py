"""Open streams re-check their token in the database; streams on one token share the lookups,
so a thousand subscribers on one token cost one query per half period, not a thousand."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.auth import Unauthenticated
from app.http import monitor_auth


def test_streams_on_one_token_share_one_lookup_per_half_period(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []

    def lookup(engine: Any, token: str) -> None:
        time.sleep(0.01)  # long enough for every stream to be waiting on it
        lookups.append(token)

    monkeypatch.setattr(monitor_auth, "reauthenticate_token", lookup)

    async def streams() -> list[Unauthenticated | None]:
        return await asyncio.gather(*(monitor_auth._token_standing(None, "mk_one") for _ in range(200)))

    answers = asyncio.run(streams())
    assert answers == [None] * 200
    assert lookups == ["mk_one"]


def test_a_revoked_token_is_seen_by_every_stream_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def revoked(engine: Any, token: str) -> None:
        raise Unauthenticated("The bearer token was revoked")

    monkeypatch.setattr(monitor_auth, "reauthenticate_token", revoked)

    async def streams() -> list[Unauthenticated | None]:
        return await asyncio.gather(*(monitor_auth._token_standing(None, "mk_gone") for _ in range(20)))

    answers = asyncio.run(streams())
    assert all(isinstance(a, Unauthenticated) for a in answers)


def test_an_answer_older_than_half_the_period_is_looked_up_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    monkeypatch.setattr(monitor_auth, "reauthenticate_token", lambda engine, token: lookups.append(token))
    settings = monitor_auth.get_settings()
    monkeypatch.setattr(settings.monitor, "token_recheck_seconds", 0.1)

    async def twice() -> None:
        await monitor_auth._token_standing(None, "mk_two")
        await asyncio.sleep(0.06)
        await monitor_auth._token_standing(None, "mk_two")

    asyncio.run(twice())
    assert lookups == ["mk_two", "mk_two"]

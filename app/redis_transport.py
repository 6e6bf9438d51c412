"""kombu's Redis transport, with each channel keeping one Redis client for its plain commands.

kombu makes a new `redis.Redis` for every command it sends outside the consumer's poll loop
(each publish, each ack, each QoS bookkeeping call: `Channel.conn_or_acquire`). With
redis-py 8 that construction is no longer cheap: it builds a case-insensitive table of ~170
response callbacks, 137 µs of CPU here, twice per `send_task` (the task and its task-sent
event) and several times per message a worker acknowledges. A client holds no connection of
its own (each command borrows one from the channel's pool, which is thread-safe), so one per
channel serves every such call; the consumer's BRPOP client, which does pin a connection, is
kombu's own cached one and is left as it is.

Used for `redis://` and `rediss://` brokers (`app.broker.build_celery` names it as Celery's
`broker_transport`). A `redis+socket://` URL (the embedded default) names its transport in
the scheme, which kombu lets win; it keeps the stock transport, whose behaviour is the same.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

_SHARED: str = "_makima_plain_client"


class Channel(kombu_redis.Channel):
    """A Redis channel whose plain (non-polling) commands share one client."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self.__dict__.get(_SHARED)
        if client is None:
            client = self.__dict__[_SHARED] = super()._create_client(asynchronous=False)  # type: ignore[no-untyped-call]
        return client

    def _disconnect_pools(self) -> None:
        # The pool the shared client borrows from is going away; a later command makes a new one.
        self.__dict__.pop(_SHARED, None)
        super()._disconnect_pools()  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT: str = f"{__name__}:Transport"

__all__ = ["TRANSPORT", "Channel", "Transport"]

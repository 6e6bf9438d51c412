#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the integration tests use are answering on 127.0.0.1.
#
# Idempotent: a service that already answers is left alone. A service that does not is
# started the way this machine runs it (pg_ctlcluster for the packaged PostgreSQL cluster,
# a daemonized redis-server with no persistence), then we wait a bounded time for both and
# fail with a sentence naming the one that did not come up.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
WAIT_SECONDS="${ENSURE_SERVICES_WAIT_SECONDS:-30}"

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

for tool in pg_isready redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || { echo "ensure-services: '$tool' is not installed" >&2; exit 1; }
done

# The dashboard page's browser test (tests/integration/test_dashboard_page.py) drives Debian's
# chromium; install it once, and never fail the run over it (the test then skips itself).
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "ensure-services: chromium could not be installed; the browser test will be skipped"

if ! pg_up; then
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$version" ]; then
        echo "ensure-services: PostgreSQL does not answer on $PG_HOST:$PG_PORT and no cluster is configured in /etc/postgresql" >&2
        exit 1
    fi
    echo "ensure-services: starting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi

if ! redis_up; then
    echo "ensure-services: starting Redis on $REDIS_HOST:$REDIS_PORT"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

for _ in $(seq 1 "$((WAIT_SECONDS * 2))"); do
    if pg_up && redis_up; then
        echo "ensure-services: PostgreSQL ($PG_HOST:$PG_PORT) and Redis ($REDIS_HOST:$REDIS_PORT) are up"
        exit 0
    fi
    sleep 0.5
done

pg_up || echo "ensure-services: PostgreSQL still does not answer on $PG_HOST:$PG_PORT after ${WAIT_SECONDS}s (see /var/log/postgresql/)" >&2
redis_up || echo "ensure-services: Redis still does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s (see /var/log/redis/ci.log)" >&2
exit 1

"""The PostgreSQL statements that write a list of heartbeats, as text.

Their own module because they are most of the PostgreSQL store's length and are read apart from
its Python: each is one round trip whatever the list's length (the list travels as one JSON
parameter, expanded on the server by `json_to_recordset` / `jsonb_to_recordset`), and a change
to what a list does on PostgreSQL is a change here. `app.heartbeat_store_pg` fills their
parameters, runs them (`app.prepared.driver_rows`, which names a prepared statement by a hash
of its text) and decodes what they answer. The rules they apply are the pure domain's
(`app.domain.heartbeat_plan`, `app.domain.fencing`, `app.domain.incarnations`), which
`plan_batch` applies in Python on SQLite.
"""

from __future__ import annotations

from typing import Final

from app.foreign_tasks import MOST_TASK_LOCKS, NEW_TASKS_GATE, TASK_LOCK_SPACE, task_lock_key_sql

# The supervisors' fold, in the database (PostgreSQL). The worker sends the list, de-duplicated
# by id, and one statement judges every heartbeat against its supervisor's row as it is now
# (locked, in task order, so two workers never wait on each other in a circle):
#   fenced   another incarnation's than the one in force (older, or never issued), or an
#            unnamed one once an incarnation beyond the first was issued or it was declared dead;
#            with no row (none was started: see below), one naming any but the first
#            (`starts_supervisor`), against incarnation 1;
#   refused  its task id belongs to another contract (`held_by_another` in app.domain.heartbeat_plan:
#            the row's contract_id is another; or a contract_tasks row holds it on another
#            contract, an ordinary task there; the fronts refuse the same heartbeats first), or
#            it may start a supervisor that has no row (a row removed since this process saw it);
#   the winner per supervisor: the newest of the rest by (incarnation, timestamp), the first
#   received among equals; it replaces the stored state only when newer than it; every
#   unfenced heartbeat proves liveness (last_received_at).
# A supervisor seen for the first time gets a row first (`SUP_FIRST`, version 0: nothing
# committed ever shows it), so the fold can lock every supervisor it judges: only one that a
# heartbeat of the list may start (naming incarnation 1 or none, on the contract of the first
# such heartbeat), which the fold then writes, unless another contract holds its id as an
# ordinary task or by a saved state (`supervisor_states`: a supervisor known from its state
# saves alone) (then it gets none and its heartbeats are refused); one whose heartbeats all
# name an incarnation never issued gets none, and they are fenced. Nothing is read
# back but the rare and the small: the refused and fenced heartbeats, and the notices.
#
# `SUP_FIRST_GATE` and `SUP_FIRST_LOCKS` go first, in the same round trip: the locks
# (`app.foreign_tasks`) of the task ids `SUP_FIRST` may give a row that have none yet. A task
# report, state save or restoration naming such an id on another contract takes the same locks
# before it looks and writes, so the two are serialized: `SUP_FIRST` (its snapshot taken once
# the locks are held) sees a report committed first and gives no row, and a report waiting
# behind this list sees its row and is refused. Up to `MOST_TASK_LOCKS` such ids: the new-ids
# gate shared, then each id's own lock, in key order; more: the gate alone, exclusive (the
# server's lock table would not hold a lock for each of thousands). Only a supervisor's first
# heartbeat pays: a list of supervisors this process saw committed skips all three statements,
# and an id with a row already is neither counted nor locked.
_NEW_SUPERVISORS = """FROM unnest(%(tasks)s::uuid[]) AS t(task_id)
  WHERE NOT EXISTS (SELECT 1 FROM supervisors s WHERE s.task_id = t.task_id)"""

SUP_FIRST_GATE: Final = f"""
SELECT CASE WHEN n.new > {MOST_TASK_LOCKS} THEN pg_advisory_xact_lock({NEW_TASKS_GATE})
            ELSE pg_advisory_xact_lock_shared({NEW_TASKS_GATE}) END
FROM (SELECT count(*) AS new {_NEW_SUPERVISORS}) AS n
WHERE n.new > 0
"""

SUP_FIRST_LOCKS: Final = f"""
SELECT pg_advisory_xact_lock({TASK_LOCK_SPACE}, k.key)
FROM (SELECT DISTINCT {task_lock_key_sql("t.task_id")} AS key {_NEW_SUPERVISORS} ORDER BY 1) AS k
WHERE (SELECT count(*) {_NEW_SUPERVISORS}) <= {MOST_TASK_LOCKS}
"""

SUP_FIRST: Final = """
INSERT INTO supervisors (task_id, contract_id, incarnation, version, state, phase, current_activity, progress,
  pending_task_ids, heartbeat_id, sent_at, last_received_at, alive, dead_at, daemon_id, host, created_at,
  updated_at)
SELECT t.task_id, t.contract_id, 1, 0, 'initializing', '-', '', 0, '[]', NULL, NULL,
  %(received_at)s::timestamptz, true, NULL, NULL, NULL, %(received_at)s::timestamptz,
  %(received_at)s::timestamptz
FROM unnest(%(tasks)s::uuid[], %(contracts)s::uuid[]) AS t(task_id, contract_id)
WHERE NOT EXISTS (SELECT 1 FROM contract_tasks ct WHERE ct.id = t.task_id AND ct.contract_id <> t.contract_id)
  AND NOT EXISTS (SELECT 1 FROM supervisor_states ss
                  WHERE ss.task_id = t.task_id AND ss.contract_id <> t.contract_id)
ORDER BY t.task_id
ON CONFLICT (task_id) DO NOTHING
"""

# `pendingTaskIds` is read as text: nearly every list is empty, and the constant '[]'::jsonb
# spares the server a jsonb parse per heartbeat (expanding 500 heartbeats took 8-10 ms with the
# column typed jsonb, 5-7 ms with it as text, measured with `json_to_recordset` alone).
FOLD: Final = """
WITH b AS (
  SELECT * FROM json_to_recordset(%(rows)s::json) AS r(n int, "contractId" uuid, id uuid, "taskId" uuid,
    incarnation int, state text, phase text, "currentActivity" text, progress int, "pendingTaskIds" text,
    "timestamp" timestamptz, "daemonId" text, host text)
),
cur AS MATERIALIZED (
  SELECT s.task_id, s.contract_id, s.incarnation, s.state, s.sent_at, s.alive, s.version
  FROM unnest(%(tasks)s::uuid[]) AS t(task_id) JOIN supervisors s ON s.task_id = t.task_id
  ORDER BY s.task_id FOR UPDATE OF s
),
j AS MATERIALIZED (
  SELECT b.n, b."contractId" AS contract_id, b.id, b."taskId" AS task_id, b.incarnation, b.state, b.phase,
    coalesce(b."currentActivity", '') AS current_activity, coalesce(b.progress, 0) AS progress,
    CASE WHEN b."pendingTaskIds" IS NULL OR b."pendingTaskIds" = '[]' THEN '[]'::jsonb
         ELSE b."pendingTaskIds"::jsonb END AS pending_task_ids, b."timestamp" AS sent_at,
    b."daemonId" AS daemon_id, b.host, c.version AS cver, c.state AS cstate, c.alive AS calive,
    coalesce(c.incarnation, 1) AS cinc,
    coalesce(c.sent_at, '-infinity'::timestamptz) AS csent,
    ot.id IS NOT NULL OR coalesce(c.contract_id <> b."contractId", coalesce(b.incarnation, 1) = 1) AS refused,
    ot.id IS NULL AND coalesce(c.contract_id = b."contractId" AND CASE WHEN b.incarnation IS NULL
                                                     THEN NOT c.alive OR c.incarnation > 1
                                                     ELSE b.incarnation <> c.incarnation END,
             coalesce(b.incarnation, 1) <> 1) AS fenced,
    coalesce(b.incarnation, CASE WHEN c.version > 0 THEN c.incarnation ELSE 1 END) AS eff
  FROM b LEFT JOIN cur c ON c.task_id = b."taskId"
  LEFT JOIN contract_tasks ot ON ot.id = b."taskId" AND ot.contract_id <> b."contractId"
),
w AS MATERIALIZED (
  SELECT DISTINCT ON (j.task_id) j.*, (j.cver = 0 OR (j.eff, j.sent_at) > (j.cinc, j.csent)) AS newer
  FROM j WHERE NOT j.refused AND NOT j.fenced
  ORDER BY j.task_id, j.eff DESC, j.sent_at DESC, j.n
),
upd AS (
  UPDATE supervisors s SET version = s.version + 1,
    last_received_at = greatest(s.last_received_at, %(received_at)s::timestamptz),
    incarnation = CASE WHEN w.newer THEN w.eff ELSE s.incarnation END,
    state = CASE WHEN w.newer THEN w.state ELSE s.state END,
    phase = CASE WHEN w.newer THEN w.phase ELSE s.phase END,
    current_activity = CASE WHEN w.newer THEN w.current_activity ELSE s.current_activity END,
    progress = CASE WHEN w.newer THEN w.progress ELSE s.progress END,
    pending_task_ids = CASE WHEN w.newer THEN w.pending_task_ids ELSE s.pending_task_ids END,
    heartbeat_id = CASE WHEN w.newer THEN w.id ELSE s.heartbeat_id END,
    sent_at = CASE WHEN w.newer THEN w.sent_at ELSE s.sent_at END,
    alive = s.alive OR w.newer,
    dead_at = CASE WHEN w.newer THEN NULL ELSE s.dead_at END,
    daemon_id = CASE WHEN w.newer THEN coalesce(w.daemon_id, s.daemon_id) ELSE s.daemon_id END,
    host = CASE WHEN w.newer THEN coalesce(w.host, s.host) ELSE s.host END,
    updated_at = %(received_at)s::timestamptz
  FROM w WHERE s.task_id = w.task_id
  RETURNING s.task_id, s.contract_id, s.state, s.current_activity, s.progress, s.incarnation, s.alive
),
ev AS (
  INSERT INTO contract_events (contract_id, type, payload, created_at)
  SELECT w.contract_id, %(event_type)s,
    jsonb_build_object('contractId', w.contract_id, 'taskId', w.task_id,
      'oldState', CASE WHEN w.cver = 0 THEN NULL ELSE w.cstate END, 'newState', w.state, 'incarnation', w.eff)
    || CASE WHEN w.cver > 0 AND NOT w.calive THEN '{"revived": true}'::jsonb ELSE '{}'::jsonb END,
    %(received_at)s::timestamptz
  FROM w WHERE w.newer AND (w.cver = 0 OR w.cstate <> w.state OR NOT w.calive)
  ORDER BY w.n
  RETURNING id
),
ins AS (
  INSERT INTO supervisor_heartbeats (contract_id, id, received_day, received_at, task_id, incarnation, state,
    phase, current_activity, progress, pending_task_ids, sent_at, fenced, daemon_id, host)
  SELECT j.contract_id, j.id, %(day)s::date, %(received_at)s::timestamptz, j.task_id, j.incarnation, j.state,
    j.phase, j.current_activity, j.progress, j.pending_task_ids, j.sent_at, j.fenced, j.daemon_id, j.host
  FROM j
  WHERE NOT j.refused AND NOT EXISTS (
    SELECT 1 FROM supervisor_heartbeats h
    WHERE h.contract_id = j.contract_id AND h.id = j.id
      AND h.received_day < %(day)s::date AND h.received_day >= %(oldest)s::date)
  ON CONFLICT (contract_id, id, received_day) DO NOTHING
  RETURNING 1
),
due AS (
  SELECT id FROM contracts
  WHERE id IN (SELECT j.contract_id FROM j WHERE NOT j.refused AND NOT j.fenced)
    AND last_activity_at < %(bump_before)s::timestamptz
  ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
),
bump AS (
  UPDATE contracts c SET last_activity_at = %(received_at)s::timestamptz FROM due WHERE c.id = due.id
  RETURNING 1
),
k AS (
  SELECT (SELECT count(*) FROM ins) AS stored,
    count(*) FILTER (WHERE NOT j.refused) AS offered,
    count(*) FILTER (WHERE j.fenced) AS fenced,
    count(*) FILTER (WHERE j.refused) AS refused
  FROM j
),
cnt AS (
  INSERT INTO heartbeat_counters AS t (shard, received, stored, duplicates, fenced, refused, updated_at)
  SELECT %(shard)s, %(received)s, k.stored, k.offered + %(repeats)s - k.stored, k.fenced,
    k.refused + %(refused)s, %(received_at)s::timestamptz FROM k
  ON CONFLICT (shard) DO UPDATE SET received = t.received + EXCLUDED.received,
    stored = t.stored + EXCLUDED.stored, duplicates = t.duplicates + EXCLUDED.duplicates,
    fenced = t.fenced + EXCLUDED.fenced, refused = t.refused + EXCLUDED.refused,
    updated_at = EXCLUDED.updated_at
  RETURNING 1
)
SELECT k.stored, k.offered, k.fenced, (SELECT count(*) FROM bump), (SELECT count(*) FROM ev),
  (SELECT count(*) FROM w WHERE w.newer), (SELECT count(*) FROM cnt),
  (SELECT coalesce(json_agg(j.n), '[]') FROM j WHERE j.refused)::text,
  (SELECT coalesce(json_agg(json_build_object('contractId', f.contract_id, 'taskId', f.task_id,
     'incarnation', f.incarnation, 'current', f.cinc, 'daemonId', f.daemon_id, 'host', f.host)), '[]')
   FROM (SELECT DISTINCT ON (j.task_id, j.incarnation) j.* FROM j WHERE j.fenced
         ORDER BY j.task_id, j.incarnation, j.n) f)::text,
  CASE WHEN %(notices)s THEN (SELECT coalesce(json_agg(json_build_object('notice', 'heartbeat',
     'contractId', u.contract_id, 'payload', json_build_object('taskId', u.task_id, 'state', u.state,
     'activity', u.current_activity, 'progress', u.progress, 'incarnation', u.incarnation,
     'alive', u.alive))), '[]') FROM upd u)::text
  ELSE (SELECT count(*) FROM upd)::text END
FROM k
"""


COUNT_ONLY: Final = """
INSERT INTO heartbeat_counters AS t (shard, received, stored, duplicates, fenced, refused, updated_at)
VALUES (%(shard)s, %(received)s, 0, 0, 0, %(refused)s, %(at)s::timestamptz)
ON CONFLICT (shard) DO UPDATE SET received = t.received + EXCLUDED.received,
  refused = t.refused + EXCLUDED.refused, updated_at = EXCLUDED.updated_at
"""


__all__ = ["COUNT_ONLY", "FOLD", "SUP_FIRST", "SUP_FIRST_GATE", "SUP_FIRST_LOCKS"]

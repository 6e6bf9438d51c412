"""The HTTP front: a thin FastAPI app that maps `/api/v1/...` onto the API module.

Why it is thin: every rule lives in `app.contracts` and `app.domain`, and every caller (CLI,
daemon, worker, this front) goes through `ContractsAPI`, so a rule holds the same way whoever
asks. This package only does what belongs at the HTTP edge:

    application.py  create_app: routers, error handlers, docs, wiring (engine, sender, broker)
    contracts.py    /api/v1/contracts: create, list, read, status, phase, deliverables, events
    reports.py      daemon reports, queued and answered 202 {messageId}
    health.py       /healthz (liveness) and /readyz (database + broker)
    docs.py         / and the offline /docs and /redoc
    errors.py       error class → status and code, error bodies, WebSocket close codes
    error_handlers.py  the exception handlers: bad input, refused rules, routing, database, broker
    deps.py         authentication, the caller's ContractsAPI, query parsers
    bodies.py       request bodies (strict, camelCase); answers are `app.schemas`
    problems.py     the field-by-field `problems` of an INVALID_REQUEST

Bad input is always the caller's 4xx, never a 500: malformed JSON is 400, a body or query that
does not match the schema is 422 (each problem listed with its field, and the allowed values
when there is a closed set), and a rule the domain refuses is the status `errors.py` maps.

`app.http:app` is the module-level app uvicorn serves.
"""

from app.http.application import create_app
from app.http.errors import ERROR_STATUS, STATUS_BY_ERROR
from app.schemas import ErrorBody

app = create_app()

__all__ = ["ERROR_STATUS", "STATUS_BY_ERROR", "ErrorBody", "app", "create_app"]

"""`makima simulate`: a fleet of simulated supervisors against a running service.

    makima simulate --supervisors 200 --duration 60 [--crash-rate 2] [--url URL]
                    [--token T --person-token P] [--heartbeat-interval 5] [--seed K] [--json]

The fleet speaks HTTP only, like any daemon (`app.simulation`). With no tokens given it makes a
fresh owner (`sim-<random>`) with a supervisor token (the daemons') and a user token (the
person who creates the contracts and answers the questions) in the configured database, as
`makima token create` does, so `makima run` in one terminal and `makima simulate ...` in
another is all it takes. The URL defaults to the API address `makima run` prints.

Progress lines go to stderr every few seconds; the reconciliation (a table, or JSON with
`--json`) goes to stdout. Exit 0 when nothing is lost, 1 otherwise (and 1 when no service
answers at the URL), 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.console import err, fail
from app.cli.errors import EXIT_INVALID, load_settings

if TYPE_CHECKING:
    from app.simulation import Tokens

MAX_HEARTBEAT_INTERVAL = 30.0  # the service's own rhythm: a simulator never beats slower


def _tokens(token: str | None, person_token: str | None) -> Tokens:
    """The tokens given, or a fresh owner's two tokens made in the configured database."""
    from app.simulation import Tokens

    if token is not None and person_token is not None:
        return Tokens(supervisor=token, person=person_token)
    if token is not None or person_token is not None:
        raise fail(
            "give both --token (a supervisor token: the daemons') and --person-token (a user token of "
            "the same owner: the person), or neither to have a fresh owner made here.",
            EXIT_INVALID,
        )
    settings = load_settings()
    from app.auth import Role, create_token
    from app.config import safe_url
    from app.db import unit_of_work

    owner = f"sim-{uuid.uuid4().hex[:8]}"
    with unit_of_work() as uow:
        supervisor = create_token(uow.session, owner, Role.SUPERVISOR, "simulated daemons")
        person = create_token(uow.session, owner, Role.USER, "simulated person")
    where = safe_url(settings.effective_database_url)
    err.print(
        f"Owner '{owner}': a supervisor token and a user token made in {where} "
        f"(list them with 'makima token list --owner {owner}').",
        markup=False,
    )
    return Tokens(supervisor=supervisor, person=person, owner=owner)


def _default_url() -> str:
    from app.service_runner import display_url

    return display_url(load_settings())


def _check_reachable(url: str) -> None:
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/healthz", timeout=5, trust_env=False).raise_for_status()
    except httpx.HTTPError as exc:
        raise fail(
            f"no service answers at {url} ({exc}). Start one with 'makima run' (or pass --url)."
        ) from None


# The options, one alias each (what they mean is their help).
Supervisors = Annotated[int, typer.Option(min=1, max=10_000, help="Simulated supervisors, a contract each.")]
Duration = Annotated[float, typer.Option(min=1, help="Seconds of sending, before the reconciliation.")]
CrashRate = Annotated[float, typer.Option(min=0, max=60, help="Crashes per supervisor per minute.")]
Url = Annotated[str | None, typer.Option(help="The service's base URL (default: what 'makima run' prints).")]
SupervisorToken = Annotated[str | None, typer.Option(help="A supervisor token, with --person-token.")]
PersonToken = Annotated[
    str | None, typer.Option(help="A user token of the same owner: creates contracts, answers questions.")
]
HeartbeatInterval = Annotated[
    float, typer.Option(min=0.5, max=MAX_HEARTBEAT_INTERVAL, help="Seconds between a daemon's heartbeats.")
]
Seed = Annotated[int | None, typer.Option(help="Seed of every random choice (default: random, printed).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the reconciliation as JSON.")]
Daemons = Annotated[
    int | None, typer.Option(min=1, max=100, help="Daemons (default: 1 per 10 supervisors, at most 8).")
]
Concurrency = Annotated[int, typer.Option(min=1, max=512, help="Requests in flight at most.")]
StepSeconds = Annotated[float, typer.Option(min=0.1, max=600, help="Mean seconds between two steps.")]
Grace = Annotated[float, typer.Option(min=0, max=3600, help="Seconds to wait for what is pending.")]


def simulate(
    supervisors: Supervisors,
    duration: Duration,
    crash_rate: CrashRate = 0.0,
    url: Url = None,
    token: SupervisorToken = None,
    person_token: PersonToken = None,
    heartbeat_interval: HeartbeatInterval = 5.0,
    seed: Seed = None,
    as_json: AsJson = False,
    daemons: Daemons = None,
    concurrency: Concurrency = 32,
    step_seconds: StepSeconds = 2.0,
    grace: Grace = 60.0,
) -> None:
    """Drive simulated supervisors against a running service over HTTP, then reconcile.

    Each supervisor drives a `simple` contract: heartbeats, tasks spawned and completed,
    deliverables, state saves, questions a simulated person answers, and crashes followed by
    a restoration. At the end every item sent is checked against what the service holds;
    the exit status is 0 only when nothing it acknowledged is lost.
    """
    from app.simulation import Options, exit_code
    from app.simulation import simulate as run_fleet
    from app.simulation.plan import default_daemon_count

    target = (url or _default_url()).rstrip("/")
    if not target.startswith(("http://", "https://")):
        raise fail(f"--url must start with http:// or https:// (got {target!r}).", EXIT_INVALID)
    if (token is None) != (person_token is None):
        _tokens(token, person_token)  # refuses half a pair before anything is asked of the service
    # The service first: no owner or token is made for a run that cannot start.
    _check_reachable(target)
    tokens = _tokens(token, person_token)
    chosen_seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
    options = Options(
        supervisors=supervisors,
        duration=duration,
        crash_rate=crash_rate,
        heartbeat_interval=heartbeat_interval,
        seed=chosen_seed,
        daemons=daemons or default_daemon_count(supervisors),
        concurrency=concurrency,
        step_seconds=step_seconds,
        grace=grace,
    )
    on = min(options.daemons, supervisors)
    err.print(
        f"Simulating {supervisors} supervisors on {on} daemons for {duration:g} s "
        f"against {target} (crash rate {crash_rate:g}/min, heartbeats every {heartbeat_interval:g} s, "
        f"seed {chosen_seed}).",
        markup=False,
    )
    try:
        result = asyncio.run(run_fleet(options, tokens, target, lambda line: err.print(line, markup=False)))
    except KeyboardInterrupt:
        raise fail("interrupted: the fleet stopped before its reconciliation.", 130) from None
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.render())
    code = exit_code(result)
    if code:
        lost = f"{result.lost} item(s) sent were not found in the service"
        err.print(f"error: {lost}: see the 'lost' column.", markup=False)
    raise typer.Exit(code)


__all__ = ["simulate"]

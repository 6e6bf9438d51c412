"""The dashboard page (`/dashboard`, issue 13 item 5) in a real headless Chromium.

A real uvicorn on a loopback port against the test PostgreSQL; the page signs in with a token,
shows a status change made through the API after it loaded (over the live monitor, no reload),
confirms a guarded phase, and answers the questions a supervisor asks through the API (each
type with its input) until the contract is active again. The screenshot goes to a tmp path;
with WRITE_DASHBOARD_SCREENSHOT=1 it is also copied to docs/dashboard.png (the README shows it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import heartbeats
from app.heartbeat_messages import message_of
from app.http.application import create_app
from app.models import utcnow
from tests.integration.live_server import serve

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
BASE = "/api/v1/contracts"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (scripts/ensure-services.sh does) "
        "to run the dashboard page's browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (the dev extra) is not installed")


def _no_broker(task: str, payload: dict[str, Any], countdown: float | None = None, /) -> str:
    return "not-sent"


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[str]:
    with serve(create_app(sender=_no_broker)) as base:
        yield base


class Client:
    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, path, json=body)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def create(self, name: str, **fields: Any) -> str:
        return str(self.ok("POST", BASE, {"name": name, "contractType": "simple", **fields})["id"])

    def status(self, cid: str, target: str, **fields: Any) -> Any:
        return self.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": target, **fields})


def test_dashboard_signs_in_follows_live_events_confirms_a_phase_and_answers_questions(
    server: str, make_caller: Any, tmp_path: Path
) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    token, _ = make_caller(owner, "user")
    supervisor_token, supervisor_caller = make_caller(owner, "supervisor")
    user, supervisor = Client(server, token), Client(server, supervisor_token)

    live = user.create("Nightly report <b>bold</b>")
    user.status(live, "active")
    guarded = user.create("Guarded release", phaseGuard=True)
    user.status(guarded, "active")
    supervisor.ok("POST", f"{BASE}/{guarded}/deliverables/plan-document/complete")
    user.status(guarded, "waiting_for_input", waitingFor="phase_confirmation")
    waiting = user.create("Needs an answer")
    user.status(waiting, "active")
    user.status(waiting, "waiting_for_input", waitingFor="question")
    asking = user.create("OAuth login")
    user.status(asking, "active")
    migrating = user.create("Session store migration")
    user.status(migrating, "active")
    scoping = user.create("Token scopes")
    user.status(scoping, "active")
    # One contract's supervisor reports (ingested here, as a worker would: this server sends
    # nothing); the page asks the supervisor status of that contract only.
    supervised = user.create("Supervised rollout")
    user.status(supervised, "active")
    beat = {
        "taskId": str(uuid.uuid4()),
        "contractId": supervised,
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }
    heartbeats.ingest(message_of({supervisor_caller.principal_id: [beat]}))
    icon = httpx.get(server + "/favicon.ico", timeout=30)
    assert (icon.status_code, icon.headers["content-type"]) == (200, "image/x-icon")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Nothing the page asks for is refused: no 404 for a supervisor that never
            # reported, nor for the icon.
            refused: list[str] = []
            page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server + "/dashboard")

            # Sign in with the token.
            page.fill("#token", token)
            page.click("#sign-in")
            page.wait_for_selector("#live.on", timeout=15_000)
            sync_api.expect(page.locator("#who")).to_have_text(f"{owner} · user")
            sync_api.expect(page.locator("#supervisors")).to_contain_text(
                "Supervised rollout", timeout=15_000
            )
            sync_api.expect(page.locator("#supervisors")).to_contain_text("working")
            live_row = page.locator(f'#contracts tr[data-contract-id="{live}"]')
            sync_api.expect(live_row.locator(".status-cell")).to_have_text("active", timeout=15_000)
            # Text is inserted as text: the name's markup is shown, never parsed.
            sync_api.expect(live_row.locator("td").first).to_have_text("Nightly report <b>bold</b>")
            assert page.locator("#contracts b").count() == 0
            waiting_row = page.locator(f'#waiting tr[data-contract-id="{waiting}"]')
            sync_api.expect(waiting_row).to_contain_text("question")
            sync_api.expect(
                page.locator('#status-counts tr[data-status="waiting_for_input"]')
            ).to_contain_text("2")
            assert page.evaluate("sessionStorage.getItem('makima.dashboard.token')") == token

            # A status change made through the API after the page loaded arrives live.
            page.evaluate("window.__notReloaded = true")
            user.status(live, "paused", reason="from the test")
            sync_api.expect(live_row.locator(".status-cell")).to_have_text("paused", timeout=15_000)
            event = page.locator(f'#events li[data-contract-id="{live}"][data-type="status_changed"]')
            sync_api.expect(event.first).to_contain_text("active → paused", timeout=15_000)
            assert page.evaluate("window.__notReloaded === true")

            # Confirm the guarded phase from the page; the contract moves on.
            guarded_row = page.locator(f'#waiting tr[data-contract-id="{guarded}"]')
            sync_api.expect(guarded_row).to_contain_text("phase_confirmation")
            guarded_row.locator("button.confirm-phase").click()
            guarded_contract = page.locator(f'#contracts tr[data-contract-id="{guarded}"]')
            sync_api.expect(guarded_contract.locator(".phase-cell")).to_have_text("execute", timeout=15_000)
            sync_api.expect(page.locator("#notice")).to_contain_text("moved to phase execute")
            sync_api.expect(
                page.locator(f'#events li[data-contract-id="{guarded}"][data-type="phase_changed"]').first
            ).to_contain_text("plan → execute", timeout=15_000)
            assert user.ok("GET", f"{BASE}/{guarded}")["phase"] == "execute"
            assert page.evaluate("window.__notReloaded === true")

            # A supervisor asks through the API; each question appears live with its input.
            def ask(cid: str, question: str, kind: str, **more: Any) -> str:
                body = {"question": question, "type": kind, **more}
                return str(supervisor.ok("POST", f"{BASE}/{cid}/questions", body)["id"])

            provider = ask(
                asking,
                "Which identity provider?",
                "single_choice",
                options=["Google", "GitHub", "Okta"],
                context="The plan names two; the customer uses one.",
            )
            notes = ask(asking, "Anything the release notes must say?", "free_text")
            drop = ask(migrating, "May I drop the legacy session table?", "confirmation")
            ask(
                scoping,
                "Which scopes does the app need?",
                "multiple_choice",
                options=["email", "profile", "groups"],
            )
            asking_row = page.locator(f'#contracts tr[data-contract-id="{asking}"]')
            sync_api.expect(asking_row.locator(".status-cell")).to_have_text(
                "waiting_for_input", timeout=15_000
            )
            choice = page.locator(f'form.question[data-question-id="{provider}"]')
            sync_api.expect(choice.locator('input[type="radio"]')).to_have_count(3, timeout=15_000)
            sync_api.expect(choice).to_contain_text("The plan names two; the customer uses one.")
            sync_api.expect(
                page.locator(f'form.question[data-question-id="{notes}"] textarea')
            ).to_have_count(1)
            scopes = page.locator('form.question[data-type="multiple_choice"] input[type="checkbox"]')
            sync_api.expect(scopes).to_have_count(3, timeout=15_000)
            # The summary carries the oldest open question's text (seed 4.4) and every open one.
            summary = user.ok("GET", f"{BASE}/dashboard")
            waits = {w["id"]: w for w in summary["waitingForInput"]}
            assert waits[asking]["question"] == "Which identity provider?"
            assert [q["id"] for q in waits[asking]["openQuestions"]] == [provider, notes]
            assert waits[asking]["openQuestions"][0]["options"] == ["Google", "GitHub", "Okta"]
            assert waits[waiting]["question"] is None and waits[waiting]["openQuestions"] == []

            # One answer of two: the contract still waits.
            choice.locator('input[value="Okta"]').check()
            choice.locator("button.answer").click()
            sync_api.expect(page.locator("#notice")).to_contain_text("it still waits for question")
            sync_api.expect(choice).to_have_count(0, timeout=15_000)
            # A half-typed answer survives a refresh brought by another contract's event.
            text_form = page.locator(f'form.question[data-question-id="{notes}"]')
            text_form.locator("textarea").fill("Mention the new login page.")
            user.status(live, "active", reason="unrelated")
            sync_api.expect(live_row.locator(".status-cell")).to_have_text("active", timeout=15_000)
            sync_api.expect(text_form.locator("textarea")).to_have_value("Mention the new login page.")
            # The last answer: the contract is active again, live.
            text_form.locator("button.answer").click()
            sync_api.expect(asking_row.locator(".status-cell")).to_have_text("active", timeout=15_000)
            sync_api.expect(page.locator(f'#waiting tr[data-contract-id="{asking}"]')).to_have_count(0)
            sync_api.expect(page.locator("#notice")).to_contain_text("it is active again")
            answered = page.locator(f'#events li[data-contract-id="{asking}"][data-type="question_answered"]')
            sync_api.expect(answered).to_have_count(2, timeout=15_000)
            sync_api.expect(answered.first).to_contain_text("Mention the new login page.")
            sync_api.expect(
                page.locator(f'#events li[data-contract-id="{asking}"][data-type="question_asked"]').first
            ).to_contain_text("Anything the release notes must say?")
            # A confirmation is a Yes or a No.
            page.locator(f'form.question[data-question-id="{drop}"] button.answer-yes').click()
            migrating_row = page.locator(f'#contracts tr[data-contract-id="{migrating}"]')
            sync_api.expect(migrating_row.locator(".status-cell")).to_have_text("active", timeout=15_000)
            assert user.ok("GET", f"{BASE}/{asking}/questions/{provider}")["answer"] == "Okta"
            assert (
                user.ok("GET", f"{BASE}/{asking}/questions/{notes}")["answer"]
                == "Mention the new login page."
            )
            assert user.ok("GET", f"{BASE}/{migrating}/questions/{drop}")["answer"] is True
            assert user.ok("GET", f"{BASE}/{asking}")["status"] == "active"
            assert page.evaluate("window.__notReloaded === true")
            assert errors == []
            assert refused == []

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            if os.environ.get("WRITE_DASHBOARD_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            browser.close()

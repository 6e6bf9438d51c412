// The live dashboard (README "Dashboard page"). Every piece of data reaches the DOM through
// textContent or attributes set from code: never innerHTML.
"use strict";

(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "makima.dashboard.token";
  const MAX_EVENTS = 200;
  const MAX_CONTRACTS = 1000;

  let socket = null;
  let lastEventId = null;
  let reconnectTimer = null;
  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;
  let phaseOrders = {};
  let contractsById = new Map();
  // What a person has typed or chosen in a question's form, by question id: a refresh that
  // redraws the waiting table puts it back.
  const drafts = new Map();
  let waitingShown = null;

  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tableId, rows, emptyText, columns) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = el("td", emptyText, "muted");
      td.colSpan = columns;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const r of rows) body.appendChild(r);
  }

  function notice(text) { $("notice").textContent = text || ""; }

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || "HTTP " + status);
      this.status = status;
      this.code = err.code || "HTTP_" + status;
      this.details = err.details;
    }
  }

  async function call(method, path, body) {
    const headers = { Authorization: "Bearer " + token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  // --- reading the state ------------------------------------------------------------------

  async function listContracts(query) {
    const out = [];
    let cursor = null;
    do {
      const params = new URLSearchParams(query || {});
      params.set("limit", "500");
      if (cursor) params.set("cursor", cursor);
      const page = await call("GET", API + "/contracts?" + params.toString());
      out.push(...page.contracts);
      cursor = page.nextCursor;
    } while (cursor && out.length < MAX_CONTRACTS);
    return out;
  }

  async function summary(contracts) {
    // The server's summary when this service has it (GET /contracts/dashboard), else counted here.
    try {
      return await call("GET", API + "/contracts/dashboard");
    } catch (e) {
      if (e.status === 401) throw e;
    }
    const statusCounts = {};
    const phaseCounts = {};
    for (const c of contracts) {
      statusCounts[c.status] = (statusCounts[c.status] || 0) + 1;
      if (c.status === "active") phaseCounts[c.phase] = (phaseCounts[c.phase] || 0) + 1;
    }
    const stale = await listContracts({ stale: "true" });
    const now = Date.now();
    return {
      statusCounts, phaseCounts,
      staleContracts: stale.map((c) => ({
        id: c.id, name: c.name, phase: c.phase,
        staleDurationSecs: Math.round((now - Date.parse(c.lastActivityAt)) / 1000),
      })),
      waitingForInput: contracts.filter((c) => c.status === "waiting_for_input").map((c) => ({
        id: c.id, name: c.name, phase: c.phase, waitingFor: c.waitingFor || "question",
        waitingSince: c.statusChangedAt, question: null,
      })),
      resourceUsage: null,
    };
  }

  async function withQuestions(sum) {
    // A summary without openQuestions (counted here, or an older server): ask each waiting
    // contract for its open questions (GET .../questions?open=true).
    await Promise.all((sum.waitingForInput || []).slice(0, 25).map(async (w) => {
      if (Array.isArray(w.openQuestions)) return;
      try {
        w.openQuestions = (await call("GET", API + "/contracts/" + w.id + "/questions?open=true")).questions;
      } catch (e) {
        if (e.status === 401) throw e;
        w.openQuestions = [];
      }
      if (!w.question && w.openQuestions.length) w.question = w.openQuestions[0].question;
    }));
    return sum;
  }

  // Statuses of a contract that is not closed: its supervisor may still be running.
  const OPEN_STATUSES = "created,active,waiting_for_input,paused,blocked,completing";

  async function supervisors() {
    const rows = [];
    let alive = 0;
    let dead = 0;
    // Only contracts a supervisor has reported for (supervised=true): the others have no status
    // to read, and asking would only log SUPERVISOR_NOT_FOUND in the console.
    let open = [];
    try {
      open = (await call("GET", API + "/contracts?supervised=true&limit=25&status=" + OPEN_STATUSES)).contracts;
    } catch (e) {
      if (e.status === 401) throw e;
    }
    await Promise.all(open.map(async (c) => {
      try {
        const s = await call("GET", API + "/contracts/" + c.id + "/supervisor/status");
        if (s.alive) alive += 1; else dead += 1;
        rows.push({ name: c.name, state: s.state, alive: s.alive, heard: s.lastReceivedAt, host: s.host });
      } catch (e) {
        // FEATURE_DISABLED, or a contract deleted meanwhile: nothing to show.
      }
    }));
    let daemons = [];
    try { daemons = (await call("GET", API + "/daemons")).daemons; } catch (e) { daemons = []; }
    return { rows, alive, dead, daemons };
  }

  function duration(secs) {
    if (secs < 120) return secs + " s";
    if (secs < 7200) return Math.round(secs / 60) + " min";
    if (secs < 172800) return Math.round(secs / 3600) + " h";
    return Math.round(secs / 86400) + " d";
  }

  function statusCell(status) { return el("span", status, "status status-" + status); }

  function nextPhase(contract) {
    const own = contract.phaseConfig && contract.phaseConfig.phases;
    const ids = own ? own.map((p) => p.id) : phaseOrders[contract.contractType] || [];
    const at = ids.indexOf(contract.phase);
    return at >= 0 && at + 1 < ids.length ? ids[at + 1] : null;
  }

  function confirmButton(contract) {
    const next = nextPhase(contract);
    if (!next) return el("span", "");
    const button = el("button", "Confirm → " + next, "primary confirm-phase");
    button.type = "button";
    button.dataset.contractId = contract.id;
    button.addEventListener("click", () => confirmPhase(contract, next, button));
    return button;
  }

  // --- answering a question ------------------------------------------------------------------

  function shownAnswer(answer) {
    if (answer === true) return "yes";
    if (answer === false) return "no";
    return Array.isArray(answer) ? answer.join(", ") : String(answer);
  }

  function choice(kind, q, option, index) {
    const label = el("label", null, "option");
    const input = document.createElement("input");
    input.type = kind;
    input.name = "q-" + q.id;
    input.value = option;
    input.id = "q-" + q.id + "-" + index;
    const saved = drafts.get(q.id);
    input.checked = Array.isArray(saved) && saved.includes(option);
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + option));
    return label;
  }

  function chosen(form) {
    return Array.from(form.querySelectorAll("input:checked")).map((input) => input.value);
  }

  function questionForm(w, q) {
    // One form per open question, its input by type; answered like a guarded phase is
    // confirmed: one POST, a notice, a refresh (the live monitor brings the contract's change).
    const form = el("form", null, "question");
    form.dataset.questionId = q.id;
    form.dataset.type = q.type;
    form.appendChild(el("p", q.question, "question-text"));
    if (q.context) form.appendChild(el("p", q.context, "question-context muted"));
    const controls = el("div", null, "controls");
    form.appendChild(controls);
    const remember = () => {
      if (q.type === "free_text") drafts.set(q.id, form.querySelector("textarea").value);
      else drafts.set(q.id, chosen(form));
    };
    if (q.type === "confirmation") {
      for (const [label, value] of [["Yes", true], ["No", false]]) {
        const button = el("button", label, value ? "primary answer answer-yes" : "answer answer-no");
        button.type = "button";
        button.addEventListener("click", () => answer(w, q, value, form));
        controls.appendChild(button);
      }
      return form;
    }
    if (q.type === "free_text") {
      const text = document.createElement("textarea");
      text.name = "answer";
      text.rows = 2;
      text.maxLength = 10000;
      text.setAttribute("aria-label", "Answer to: " + q.question);
      text.value = typeof drafts.get(q.id) === "string" ? drafts.get(q.id) : "";
      controls.appendChild(text);
    } else {
      const kind = q.type === "multiple_choice" ? "checkbox" : "radio";
      (q.options || []).forEach((option, i) => controls.appendChild(choice(kind, q, option, i)));
    }
    form.addEventListener("input", remember);
    form.addEventListener("change", remember);
    const submit = el("button", "Answer", "primary answer");
    submit.type = "submit";
    controls.appendChild(submit);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let value;
      if (q.type === "free_text") {
        value = form.querySelector("textarea").value;
        if (!value.trim()) { notice("Write an answer first."); return; }
      } else if (q.type === "single_choice") {
        const picked = chosen(form);
        if (picked.length !== 1) { notice("Choose one of the options first."); return; }
        value = picked[0];
      } else {
        value = chosen(form);
        if (value.length === 0) { notice("Choose at least one option first."); return; }
      }
      answer(w, q, value, form);
    });
    return form;
  }

  async function answer(w, q, value, form) {
    const buttons = Array.from(form.querySelectorAll("button"));
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const done = await call("POST", API + "/contracts/" + w.id + "/questions/" + q.id + "/answer",
        { answer: value });
      drafts.delete(q.id);
      const then = done.contractStatus === "waiting_for_input"
        ? "it still waits for " + (done.waitingFor || "input")
        : "it is " + done.contractStatus + " again";
      notice("Answered \u201c" + q.question + "\u201d on " + w.name + ": " + shownAnswer(done.question.answer) +
        "; " + then + ".");
    } catch (e) {
      notice("Could not answer \u201c" + q.question + "\u201d: " + e.code + ": " + e.message);
      buttons.forEach((b) => { b.disabled = false; });
    }
    scheduleRefresh(0);
  }

  function waitingRows(waiting) {
    const rows = [];
    for (const w of waiting) {
      const c = contractsById.get(w.id);
      const what = w.question ? w.waitingFor + ": " + w.question : w.waitingFor;
      const action = c && w.waitingFor === "phase_confirmation" ? confirmButton(c) : el("span", "");
      const tr = row([w.name, w.phase, what, action]);
      tr.dataset.contractId = w.id;
      rows.push(tr);
      for (const q of w.openQuestions || []) {
        const qr = document.createElement("tr");
        qr.className = "question-row";
        qr.dataset.contractId = w.id;
        qr.dataset.questionId = q.id;
        const td = document.createElement("td");
        td.colSpan = 4;
        td.appendChild(questionForm(w, q));
        qr.appendChild(td);
        rows.push(qr);
      }
    }
    return rows;
  }

  async function confirmPhase(contract, next, button) {
    button.disabled = true;
    try {
      const moved = await call("POST", API + "/contracts/" + contract.id + "/phase", {
        phase: next, confirmed: true, expectedVersion: contract.version,
      });
      notice("Confirmed: " + moved.name + " moved to phase " + moved.phase + ".");
    } catch (e) {
      notice("Could not confirm " + contract.name + ": " + e.code + ": " + e.message);
      button.disabled = false;
    }
    scheduleRefresh(0);
  }

  function render(contracts, sum, sup) {
    const counts = Object.entries(sum.statusCounts || {}).filter(([, n]) => n > 0);
    fill("status-counts", counts.map(([s, n]) => {
      const tr = row([statusCell(s), n]);
      tr.dataset.status = s;
      tr.lastChild.className = "num";
      return tr;
    }), "no contracts", 2);
    fill("phase-counts", Object.entries(sum.phaseCounts || {}).map(([p, n]) => {
      const tr = row([p, n]);
      tr.dataset.phase = p;
      tr.lastChild.className = "num";
      return tr;
    }), "no active contracts", 2);

    // Redrawn only when what it shows changed, so a refresh brought by an unrelated event does
    // not take the focus (or a half-typed answer) from a person answering a question.
    const waiting = sum.waitingForInput || [];
    const shown = JSON.stringify(waiting.map((w) => [w.id, w.name, w.phase, w.waitingFor, w.question,
      (contractsById.get(w.id) || {}).version, (w.openQuestions || []).map((q) => q.id)]));
    if (shown !== waitingShown) {
      waitingShown = shown;
      fill("waiting", waitingRows(waiting), "nobody is waiting", 4);
    }

    fill("stale", (sum.staleContracts || []).map((s) => {
      const tr = row([s.name, s.phase, duration(s.staleDurationSecs)]);
      tr.dataset.contractId = s.id;
      return tr;
    }), "nothing is stale", 3);

    fill("contracts", contracts.map((c) => {
      const tr = row([c.name, statusCell(c.status), c.phase, c.waitingFor || "",
        new Date(c.lastActivityAt).toLocaleString()]);
      tr.dataset.contractId = c.id;
      tr.children[1].className = "status-cell";
      tr.children[2].className = "phase-cell";
      return tr;
    }), "no contracts yet", 5);

    const usage = sum.resourceUsage;
    const parts = [sup.alive + " alive", sup.dead + " dead"];
    if (usage) parts.push(usage.runningTasks + " running tasks", usage.activeDaemons + " live daemons");
    $("supervisor-summary").textContent = parts.join(" · ");
    const supRows = sup.rows.map((s) => row([s.name, s.state,
      el("span", s.alive ? "alive" : "dead", "pill " + (s.alive ? "alive" : "dead"))]));
    for (const d of sup.daemons) {
      supRows.push(row(["daemon " + d.daemonId + (d.host ? " @ " + d.host : ""),
        d.aliveSupervisors + "/" + d.supervisors + " supervisors",
        el("span", d.alive ? "alive" : "dead", "pill " + (d.alive ? "alive" : "dead"))]));
    }
    fill("supervisors", supRows, "no supervisor has reported", 3);
  }

  async function refresh() {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try {
      const contracts = await listContracts();
      contractsById = new Map(contracts.map((c) => [c.id, c]));
      const [sum, sup] = await Promise.all([summary(contracts).then(withQuestions), supervisors()]);
      render(contracts, sum, sup);
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      if (e.status === 401) { signOut("That token was refused: " + e.message); return; }
      notice("Could not refresh: " + e.message);
    } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; scheduleRefresh(0); }
    }
  }

  function scheduleRefresh(delay) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, delay === undefined ? 250 : delay);
  }

  // --- the live monitor -------------------------------------------------------------------

  function describe(ev) {
    const name = (contractsById.get(ev.contractId) || {}).name || ev.contractId || "";
    let what = ev.type;
    if (ev.type === "status_changed") what += " " + ev.oldStatus + " → " + ev.newStatus;
    else if (ev.type === "phase_changed") what += " " + (ev.oldPhase || ev.fromPhase || "?") + " → " + (ev.newPhase || ev.toPhase || "?");
    else if (ev.type === "question_asked" && ev.question) what += ": " + ev.question;
    else if (ev.type === "question_answered" && ev.answer !== undefined) what += ": " + shownAnswer(ev.answer);
    const when = ev.createdAt ? new Date(ev.createdAt).toLocaleTimeString() : new Date().toLocaleTimeString();
    return when + "  " + name + "  " + what + (ev.reason ? " (" + ev.reason + ")" : "");
  }

  function addEvent(ev) {
    const list = $("events");
    const item = el("li", describe(ev), "fresh");
    item.dataset.type = ev.type;
    if (ev.contractId) item.dataset.contractId = ev.contractId;
    list.insertBefore(item, list.firstChild);
    setTimeout(() => item.classList.remove("fresh"), 3000);
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  }

  function setLive(on, text) {
    const pill = $("live");
    pill.textContent = text;
    pill.className = "pill " + (on ? "on" : "off");
  }

  function connect() {
    if (!token()) return;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + API + "/contracts/monitor";
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token: token() }));
      const filter = { includeStale: true, includeHeartbeats: false };
      if (lastEventId !== null) filter.after = lastEventId;
      ws.send(JSON.stringify(filter));
    };
    ws.onmessage = (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (e) { return; }
      if (ev.type === "subscribed") { setLive(true, "live"); scheduleRefresh(0); return; }
      // A refused message: the whole explanation, before the 4400 close (not an event).
      if (ev.type === "error") { console.warn("live monitor: " + ev.error.message); return; }
      if (typeof ev.id === "number") lastEventId = ev.id;
      addEvent(ev);
      scheduleRefresh();
    };
    ws.onclose = (e) => {
      if (socket !== ws) return;
      socket = null;
      if (e.code === 4401) { signOut("The live monitor refused the token: " + e.reason); return; }
      if (e.code === 4503) { setLive(false, "monitor disabled"); return; }
      setLive(false, "reconnecting");
      clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(connect, 2000);
    };
  }

  // --- signing in and out -----------------------------------------------------------------

  function showWho(me) {
    $("who").textContent = me ? me.ownerId + " · " + me.role : "";
    $("who").title = me ? "principal " + me.principalId : "";
  }

  async function start(me) {
    $("sign-in-panel").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    if (me) showWho(me);
    else call("GET", API + "/whoami").then(showWho, () => showWho(null));
    try {
      phaseOrders = await (await fetch("/dashboard/phases.json")).json();
    } catch (e) { phaseOrders = {}; }
    await refresh();
    if (token()) connect();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    drafts.clear();
    waitingShown = null;
    const ws = socket;
    socket = null;
    if (ws) ws.close();
    clearTimeout(reconnectTimer);
    setLive(false, "offline");
    showWho(null);
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in-panel").hidden = false;
    $("sign-in-error").textContent = message || "";
  }

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) { $("sign-in-error").textContent = "Paste a token first."; return; }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    let me;
    try {
      me = await call("GET", API + "/whoami");
    } catch (e) {
      signOut(e.status === 401 ? "That token was refused: " + e.message : "Could not reach the API: " + e.message);
      return;
    }
    $("sign-in-error").textContent = "";
    start(me);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    if (token()) start(null);
  });
})();

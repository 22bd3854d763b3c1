// The task scheduler's dashboard: reads the router's JSON routes and calls its actions.
// Everything that comes from the server is written with textContent or setAttribute, never
// parsed as HTML: job names and error messages come from user code.
"use strict";

(() => {
  const CSRF_HEADER = "X-Task-Scheduler"; // the router refuses state changes without it
  const REFRESH_MS = 5000;
  const RUNS_SHOWN = 25;
  // This page is {prefix}/dashboard: the routes are its siblings, wherever it is mounted.
  const base = location.pathname.replace(/\/dashboard\/?$/, "/");
  const zone = document.body.dataset.timezone || "UTC";

  const $ = (id) => document.getElementById(id);
  const resultBox = $("result");
  const problemBox = $("problem");
  const auto = $("auto");

  function makeFormat(options) {
    try {
      return new Intl.DateTimeFormat(undefined, { ...options, timeZone: zone });
    } catch (error) {
      // A zone this browser does not know: its own zone, said so next to the zone name.
      $("zone").textContent = `${zone} (unknown to this browser: shown in its own zone)`;
      return new Intl.DateTimeFormat(undefined, options);
    }
  }
  const dateTime = makeFormat({ dateStyle: "medium", timeStyle: "medium" });
  const shortDate = makeFormat({ month: "short", day: "numeric", hour: "numeric", minute: "2-digit" });
  const day = makeFormat({ dateStyle: "short" });
  const clock = makeFormat({ timeStyle: "medium" });

  function when(date) {
    // Today (in the scheduler's zone): the time alone; another day: the date, to the minute.
    return day.format(date) === day.format(new Date()) ? clock.format(date) : shortDate.format(date);
  }

  // --- building DOM from data: text only -------------------------------------------------

  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
    for (const [name, value] of Object.entries(options.attrs || {})) {
      node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  function time(iso) {
    if (!iso) return el("span", { className: "muted", text: "—" });
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return el("span", { text: iso });
    return el("time", { text: when(date), attrs: { datetime: iso, title: dateTime.format(date) } });
  }

  function outcomeBadge(outcome) {
    const name = outcome || "running";
    const label = name === "timed_out" ? "timed out" : name;
    return el("span", { className: `badge outcome-${name}`, text: label });
  }

  function seconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 0.001) return "< 1 ms";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    return `${Math.round(value / 60)} min`;
  }

  function counts(job) {
    const parts = Object.entries(job.counts || {})
      .filter(([, n]) => n > 0)
      .map(([outcome, n]) => `${outcome === "timed_out" ? "timed out" : outcome}: ${n}`);
    return parts.length ? parts.join(", ") : "none yet";
  }

  function errorText(run) {
    if (!run || (!run.error_type && !run.error_message)) return null;
    return [run.error_type, run.error_message].filter(Boolean).join(": ");
  }

  function cell(label, children, tag = "td") {
    const attrs = { "data-label": label, role: tag === "th" ? "rowheader" : "cell" };
    if (tag === "th") attrs.scope = "row";
    return el(tag, { attrs }, children);
  }

  function fill(tbody, rows, empty) {
    tbody.replaceChildren(...rows);
    empty.hidden = rows.length > 0;
  }

  // --- talking to the router ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function detailOf(body, fallback) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((item) => (item && item.msg) || JSON.stringify(item)).join("; ");
    }
    return fallback || "the request failed";
  }

  async function api(path, method = "GET") {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers[CSRF_HEADER] = "1";
    const response = await fetch(base + path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
    });
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (error) {
        body = null;
      }
    }
    if (!response.ok) {
      let detail = detailOf(body, response.statusText);
      if (response.status === 401) detail += " (reload the page to sign in again)";
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  // --- the scheduler ---------------------------------------------------------------------------

  function renderState(status) {
    const items = [
      ["State", el("span", { className: `state-${status.state}`, text: status.state })],
      ["This worker", el("span", { className: "mono", text: status.worker_id || "—" })],
      ["Started", time(status.started_at)],
      ["Live workers", String(status.workers)],
      ["Jobs", String(status.job_count)],
      ["Runs in progress", String(status.runs_in_progress)],
      ["Engine restarts", String(status.engine_restarts)],
      ["Stale jobs", status.stale_jobs.length ? status.stale_jobs.join(", ") : "none"],
      ["Longest loop block (5 min)", seconds(status.loop_lag)],
    ];
    if (status.last_engine_error) {
      items.push(["Last engine error", el("span", { className: "error-text", text: status.last_engine_error })]);
    }
    $("state").replaceChildren(
      ...items.map(([term, value]) => el("div", {}, [el("dt", { text: term }), el("dd", {}, [value])])),
    );
  }

  // --- jobs: rows kept across refreshes, so a focused button stays focused ------------------

  const jobRows = new Map();

  function makeJobRow(id) {
    const row = { job: null, busy: false };
    row.trigger = cell("Schedule", []);
    row.next = cell("Next run", []);
    row.state = cell("State", []);
    row.last = cell("Last run", []);
    row.counts = cell("Runs", []);
    row.toggle = el("button", { attrs: { type: "button" } });
    row.run = el("button", { text: "Run now", attrs: { type: "button", "aria-label": `Run job ${id} now` } });
    row.toggle.addEventListener("click", () => {
      act(row, row.toggle, row.job.paused ? "resume" : "pause");
    });
    row.run.addEventListener("click", () => act(row, row.run, "run"));
    const actions = cell("Actions", [el("div", { className: "actions" }, [row.toggle, row.run])]);
    row.head = cell("Job", [], "th");
    row.tr = el("tr", { attrs: { "data-job-id": id, role: "row" } }, [
      row.head, row.trigger, row.next, row.state, row.last, row.counts, actions,
    ]);
    return row;
  }

  function updateJobRow(row, job) {
    row.job = job;
    const names = [el("span", { className: "mono", text: job.id })];
    if (job.name && job.name !== job.id) names.push(el("span", { className: "name", text: job.name }));
    row.head.replaceChildren(...names);
    row.trigger.replaceChildren(job.trigger.description);
    row.next.replaceChildren(job.paused ? el("span", { className: "muted", text: "— (paused)" }) : time(job.next_run_time));
    const state = [el("span", { className: job.paused ? "badge paused" : "badge", text: job.paused ? "paused" : "active" })];
    if (job.running > 0) state.push(" ", el("span", { className: "badge outcome-running", text: `running ${job.running}` }));
    row.state.replaceChildren(...state);
    const last = job.last_run;
    if (last) {
      const parts = [outcomeBadge(last.outcome), " ", time(last.finished_at || last.started_at || last.scheduled_at)];
      const error = last.outcome && last.outcome !== "success" ? errorText(last) : null;
      if (error) parts.push(el("span", { className: "sub error-text", text: error }));
      row.last.replaceChildren(...parts);
    } else {
      row.last.replaceChildren(el("span", { className: "muted", text: "never" }));
    }
    row.counts.replaceChildren(counts(job));
    const verb = job.paused ? "Resume" : "Pause";
    row.toggle.textContent = verb;
    row.toggle.setAttribute("aria-label", `${verb} job ${job.id}`);
  }

  function renderJobs(jobs) {
    const tbody = $("jobs").tBodies[0];
    const seen = new Set();
    jobs.forEach((job, index) => {
      let row = jobRows.get(job.id);
      if (!row) {
        row = makeJobRow(job.id);
        jobRows.set(job.id, row);
      }
      updateJobRow(row, job);
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
      seen.add(job.id);
    });
    for (const [id, row] of jobRows) {
      if (!seen.has(id)) {
        row.tr.remove();
        jobRows.delete(id);
      }
    }
    $("job-count").textContent = `(${jobs.length})`;
    $("jobs-empty").hidden = jobs.length > 0;
  }

  // --- runs and workers --------------------------------------------------------------------

  function renderRuns(runs) {
    const rows = runs.map((run) => {
      const attempt = run.attempt > 1 ? el("span", { className: "sub", text: `attempt ${run.attempt}` }) : null;
      const error = errorText(run);
      return el("tr", { attrs: { "data-run-id": run.run_id, role: "row" } }, [
        cell("Job", [el("span", { className: "mono", text: run.job_id }), attempt], "th"),
        cell("Outcome", [outcomeBadge(run.outcome)]),
        cell("When", [time(run.started_at || run.finished_at || run.scheduled_at)]),
        cell("Duration", [seconds(run.duration)]),
        cell("Worker", [el("span", { className: "mono", text: run.worker || "—" })]),
        cell("Error", [error ? el("span", { className: "error-text", text: error }) : el("span", { className: "muted", text: "—" })]),
        cell("Run id", [el("span", { className: "mono", text: run.run_id })]),
      ]);
    });
    fill($("runs").tBodies[0], rows, $("runs-empty"));
  }

  function renderWorkers(workers, status) {
    const rows = workers.map((worker) => {
      const self = status && status.worker_id === worker.id;
      return el("tr", { attrs: { role: "row" } }, [
        cell("Worker", [
          el("span", { className: "mono", text: worker.id }),
          el("span", { className: "sub", text: `${worker.host}, pid ${worker.pid}${self ? " (this process)" : ""}` }),
        ], "th"),
        cell("State", [el("span", { className: `state-${worker.state}`, text: worker.state })]),
        cell("Started", [time(worker.started_at)]),
        cell("Last seen", [time(worker.last_seen)]),
        cell("Runs in progress", [String(worker.runs_in_progress)]),
      ]);
    });
    fill($("workers").tBodies[0], rows, $("workers-empty"));
  }

  // --- refreshing ----------------------------------------------------------------------------

  let inflight = null;
  let timer = null;
  let lastProblem = "";

  function showProblem(text) {
    if (text === lastProblem) return; // an alert is read out once, not on every refresh
    lastProblem = text;
    problemBox.textContent = text;
    problemBox.hidden = !text;
  }

  async function load() {
    const [status, jobs, runs, workers] = await Promise.allSettled([
      api("status"),
      api("jobs"),
      api(`runs?limit=${RUNS_SHOWN}`),
      api("workers"),
    ]);
    if (status.status === "fulfilled") renderState(status.value);
    if (jobs.status === "fulfilled") renderJobs(jobs.value);
    if (runs.status === "fulfilled") renderRuns(runs.value);
    if (workers.status === "fulfilled") {
      renderWorkers(workers.value, status.status === "fulfilled" ? status.value : null);
    }
    const failed = [status, jobs, runs, workers].find((result) => result.status === "rejected");
    if (failed) {
      const error = failed.reason;
      const code = error instanceof ApiError ? ` (HTTP ${error.status})` : "";
      showProblem(`Could not refresh: ${error.message}${code}.`);
    } else {
      showProblem("");
      $("updated").textContent = `Updated at ${clock.format(new Date())}.`;
    }
  }

  function refresh() {
    if (!inflight) inflight = load().finally(() => { inflight = null; });
    return inflight;
  }

  async function refreshFresh() {
    // After an action: a refresh that started before it may hold older data; wait, then load.
    if (inflight) await inflight.catch(() => {});
    return refresh();
  }

  function schedule() {
    clearTimeout(timer);
    timer = auto.checked ? setTimeout(tick, REFRESH_MS) : null;
  }

  async function tick() {
    try {
      if (!document.hidden) await refresh();
    } finally {
      schedule();
    }
  }

  // --- actions --------------------------------------------------------------------------------

  function say(text, failed) {
    resultBox.classList.toggle("failed", Boolean(failed));
    resultBox.textContent = text;
  }

  async function act(row, button, action) {
    if (row.busy) return;
    const id = row.job.id;
    row.busy = true;
    button.setAttribute("aria-disabled", "true");
    try {
      const body = await api(`jobs/${encodeURIComponent(id)}/${action}`, "POST");
      if (action === "run") {
        say(`Started a run of job ${id} (run ${body.run_id}).`);
      } else if (action === "pause") {
        say(`Paused job ${id}.`);
      } else {
        const next = body.next_run_time ? `; next run ${dateTime.format(new Date(body.next_run_time))}` : "";
        say(`Resumed job ${id}${next}.`);
      }
    } catch (error) {
      const code = error instanceof ApiError ? ` (HTTP ${error.status})` : "";
      say(`Could not ${action === "run" ? "run" : action} job ${id}: ${error.message}${code}.`, true);
    } finally {
      row.busy = false;
      button.removeAttribute("aria-disabled");
    }
    await refreshFresh().catch(() => {});
  }

  $("refresh").addEventListener("click", () => { refreshFresh().catch(() => {}); });
  auto.addEventListener("change", schedule);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && auto.checked) tick();
  });
  tick();
})();

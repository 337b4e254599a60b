// tunefleet dashboard: draws the page named by <body data-page> from the JSON API and
// keeps it live over server-sent events (the server resumes a job's event stream by seq).
// Every value from the server goes into the DOM as text, never as HTML.
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
const MAX_LOG_LINES = 5000;
const STATES = ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PRUNED"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function num(v, digits = 4) {
  if (v === null || v === undefined) return "-";
  if (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)) return v.toExponential(2);
  return Number(v.toFixed(digits)).toString();
}

function age(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

function badge(state) {
  return el("span", { class: `state state-${(state || "").toLowerCase()}` }, state || "-");
}

function csrf() {
  const m = document.cookie.match(/(?:^|; )tf_csrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { location.reload(); throw new Error("log in"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function notice(text) {
  return el("p", { class: "error", id: "notice" }, text);
}

// One EventSource per page; `handlers` maps event names to functions of the parsed data.
function live(path, handlers) {
  const source = new EventSource(path);
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(JSON.parse(e.data), e));
  }
  if (!handlers.end) source.addEventListener("end", () => source.close());
  source.addEventListener("failure", (e) => {
    source.close();
    document.getElementById("app").prepend(notice(JSON.parse(e.data).error));
  });
  return source;
}

// --- charts ------------------------------------------------------------------------

// A uPlot chart over x plus named series; `push` adds a point, redraws once per frame and
// keeps data-points (the number of x values) on the container for tests and curious users.
// Instrumentation (off unless a page defines it first, as bench/dashboard.py does): when
// `window.tfDrawLog` is an array, each draw appends [chart title, points, epoch ms].
class Chart {
  constructor(parent, title, names, { xLabel = "step", log = false } = {}) {
    this.box = el("div", { class: "chart", "data-points": "0", "data-title": title });
    this.box.append(el("h3", {}, title));
    parent.append(this.box);
    this.names = [];
    this.xLabel = xLabel;
    this.log = log;
    this.rows = new Map(); // x -> {name: y}
    this.plot = null;
    this.pending = false;
    for (const n of names) this.addSeries(n);
  }
  addSeries(name) {
    if (this.names.includes(name)) return;
    this.names.push(name);
    if (this.plot) { this.plot.destroy(); this.plot = null; }
  }
  push(x, values) {
    const row = this.rows.get(x) || {};
    for (const [k, v] of Object.entries(values)) {
      if (v === null || v === undefined) continue;
      this.addSeries(k);
      row[k] = v;
    }
    this.rows.set(x, row);
    this.schedule();
  }
  setSeries(series) { // [{name, points: [[x, y]]}]: replaces everything (sweep overlays)
    this.rows = new Map();
    const names = series.map((s) => s.name);
    if (names.join("\n") !== this.names.join("\n")) { // a trial joined, or became the best
      this.names = names;
      if (this.plot) { this.plot.destroy(); this.plot = null; }
    }
    for (const s of series) {
      for (const [x, y] of s.points) {
        const row = this.rows.get(x) || {};
        row[s.name] = y;
        this.rows.set(x, row);
      }
    }
    this.schedule();
  }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }
  draw() {
    const xs = [...this.rows.keys()].sort((a, b) => a - b);
    const data = [xs, ...this.names.map((n) => xs.map((x) => (n in this.rows.get(x) ? this.rows.get(x)[n] : null)))];
    this.box.dataset.points = String(xs.length);
    if (!xs.length || typeof uPlot === "undefined") return;
    if (!this.plot) {
      const width = Math.max(280, this.box.clientWidth - 16);
      this.plot = new uPlot({
        width, height: 220,
        legend: { live: false },
        scales: { x: { time: false }, y: this.log ? { distr: 3 } : {} },
        axes: [{ label: this.xLabel }, { size: 60 }],
        series: [{ label: this.xLabel }, ...this.names.map((n, i) => ({
          label: n, stroke: COLORS[i % COLORS.length], width: n.startsWith("★") ? 3 : 1.5,
          spanGaps: true, points: { show: xs.length < 40 },
        }))],
      }, data, this.box);
    } else {
      this.plot.setData(data);
    }
    if (Array.isArray(window.tfDrawLog)) window.tfDrawLog.push([this.box.dataset.title, xs.length, performance.timeOrigin + performance.now()]);
  }
}

// Param-vs-metric: one point per trial with a value, x its parameter's value, y the value.
// Parameters arrive as YAML text: all numeric ones plot as numbers (log x past two decades,
// as a loguniform lr does); anything else sits at evenly spaced positions named by the
// value. The best trial is its own, larger series. data-points counts points (trials), not
// distinct x values, since a grid repeats them.
class Scatter {
  constructor(parent, title, xLabel) {
    this.box = el("div", { class: "chart", "data-points": "0", "data-title": title });
    this.box.append(el("h3", {}, title));
    parent.append(this.box);
    this.xLabel = xLabel;
    this.plot = null;
    this.shape = "";
  }
  set(points) { // [{x, y, best}]
    const asNum = (v) => (typeof v === "number" ? v : String(v).trim() === "" ? NaN : Number(v));
    const numeric = points.every((p) => Number.isFinite(asNum(p.x)));
    const cats = numeric ? [] : [...new Set(points.map((p) => String(p.x)))].sort();
    const pos = points.map((p) => (numeric ? asNum(p.x) : cats.indexOf(String(p.x))));
    const log = numeric && pos.length > 0 && pos.every((x) => x > 0) && Math.max(...pos) / Math.min(...pos) > 100;
    const order = points.map((p, i) => [pos[i], p]).sort((a, b) => a[0] - b[0]);
    const data = [order.map(([x]) => x), order.map(([, p]) => (p.best ? null : p.y)), order.map(([, p]) => (p.best ? p.y : null))];
    this.box.dataset.points = String(points.length);
    const shape = JSON.stringify([log, cats]);
    if (this.plot && shape !== this.shape) { this.plot.destroy(); this.plot = null; }
    this.shape = shape;
    if (!points.length || typeof uPlot === "undefined") return;
    if (this.plot) { this.plot.setData(data); return; }
    const x = { time: false };
    const xAxis = { label: this.xLabel };
    if (log) { // label the decades only, readably (uPlot's own labels round 1e-5 to 0)
      x.distr = 3;
      xAxis.values = (u, splits) => splits.map((v) => (v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9 ? num(v) : null));
    }
    if (cats.length) {
      x.range = [-0.5, cats.length - 0.5];
      xAxis.splits = () => cats.map((_, i) => i);
      xAxis.values = (u, splits) => splits.map((i) => cats[i] ?? "");
    }
    const dots = (label, color, size) => ({ label, stroke: color, fill: color, paths: () => null, points: { show: true, size, fill: color } });
    this.plot = new uPlot({
      width: Math.max(280, this.box.clientWidth - 16), height: 220,
      legend: { live: false },
      scales: { x, y: {} },
      axes: [xAxis, { size: 60 }],
      series: [{ label: this.xLabel }, dots("trial", COLORS[0], 7), dots("★ best", COLORS[1], 13)],
    }, data, this.box);
  }
}

// --- pages -------------------------------------------------------------------------

function jobsPage(app) {
  const filter = el("select", { id: "state-filter" }, el("option", { value: "" }, "all states"),
    STATES.map((s) => el("option", { value: s }, s.toLowerCase())));
  const body = el("tbody");
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["ID", "Name", "State", "Strategy", "Progress", "Best metric", "Age"].map((h) => el("th", {}, h)))),
    body);
  app.append(el("h1", {}, "Jobs"), el("p", {}, el("label", {}, "Show ", filter)), table);
  let rows = [];
  const render = () => {
    body.replaceChildren(...rows.map((j) => el("tr", { "data-job": j.id, "data-state": j.state },
      el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(j.id)}` }, j.id)),
      el("td", {}, j.name),
      el("td", {}, badge(j.state)),
      el("td", {}, j.strategy || "-"),
      el("td", {}, j.progress === null ? "-" : el("progress", { max: "1", value: String(j.progress), title: `${Math.round(j.progress * 100)}%` })),
      el("td", {}, j.best === null ? "-" : `${j.metric} ${num(j.best)}`),
      el("td", { title: j.created ? new Date(j.created * 1000).toISOString() : "" }, age(j.created)))));
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "empty" }, "no jobs")));
  };
  let source = null;
  const connect = () => {
    if (source) source.close();
    const q = filter.value ? `?state=${encodeURIComponent(filter.value)}` : "";
    source = live(`/api/jobs/stream${q}`, { data: (d) => { rows = d.jobs; render(); } });
  };
  filter.addEventListener("change", connect);
  connect();
  setInterval(render, 5000); // ages move on without asking the server
}

function jobPage(app, jobId) {
  const header = el("div", { class: "job-header" });
  const facts = el("dl", { class: "facts" });
  const charts = el("div", { class: "charts" });
  const figures = el("div", { class: "figures" });
  const reports = el("div", { class: "reports" });
  const log = el("ol", { class: "log", id: "events" });
  app.append(header, facts, charts, figures, reports, el("h2", {}, "Events"), log);
  const loss = new Chart(charts, "Loss", ["train loss"]);
  const evals = new Chart(charts, "Eval metrics", []);
  const lr = new Chart(charts, "Learning rate", ["lr"]);
  const speed = new Chart(charts, "Throughput (samples/s)", ["samples/s"]);

  let job = null;
  const drawHeader = () => {
    const cancel = el("button", {
      id: "cancel", class: "danger", disabled: job.terminal || job.cancel_requested ? "disabled" : null,
      onclick: async () => {
        if (!confirm(`Cancel ${job.id}?`)) return;
        try {
          job = await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST", headers: { "X-CSRF-Token": csrf() } });
          drawHeader();
        } catch (e) { app.prepend(notice(`cancel failed: ${e.message}`)); }
      },
    }, job.cancel_requested && !job.terminal ? "Cancelling…" : "Cancel");
    header.replaceChildren(el("h1", {}, job.name, " ", el("small", {}, job.id)),
      el("p", {}, badge(job.state), job.reason ? ` ${job.reason}` : "", " ", cancel));
    facts.replaceChildren(...Object.entries({ ...job.spec, submitter: job.submitter, worker: job.worker, attempt: job.attempt, sweep: job.sweep })
      .filter(([, v]) => v !== "" && v !== null && v !== undefined)
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, k === "sweep" ? el("a", { href: `/sweeps/${encodeURIComponent(v)}` }, v) : String(v))]));
    const summary = Object.entries(job.summary);
    const artifacts = Object.entries(job.artifacts);
    figures.replaceChildren(
      summary.length ? el("div", {}, el("h2", {}, "Results"), el("table", { class: "kv", id: "summary" }, summary.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, num(v)))))) : "",
      artifacts.length ? el("div", {}, el("h2", {}, "Artifacts"), el("table", { class: "kv", id: "artifacts" }, artifacts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, el("code", {}, v)))))) : "");
  };
  const refresh = async () => { job = await api(`/api/jobs/${encodeURIComponent(jobId)}`); drawHeader(); };

  const addLine = (cls, ...text) => { // the log follows new lines unless scrolled up
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
    log.append(el("li", { class: cls }, ...text));
    if (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove(); // `ftctl logs` has them all
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  const onEvent = (e) => {
    const when = e.time ? new Date(e.time * 1000).toISOString().slice(11, 19) : "";
    if (e.kind === "metrics") {
      if (e.phase === "train") {
        loss.push(e.step, { "train loss": e.loss });
        lr.push(e.step, { lr: e.lr });
        speed.push(e.step, { "samples/s": e.samples_per_s });
      } else if (e.phase === "eval") {
        evals.push(e.step, Object.fromEntries(Object.entries(e.values).map(([k, v]) => [`val ${k}`, v])));
        if ("loss" in e.values) loss.push(e.step, { "val loss": e.values.loss });
      } else if (e.phase === "test") {
        addLine("test", when, " test: ", Object.entries(e.values).map(([k, v]) => `${k} ${num(v)}`).join(" · "));
      }
    } else if (e.kind === "log") {
      addLine(`level-${e.level}`, when, " ", e.message);
    } else if (e.kind === "state_change") {
      addLine("transition", when, " → ", e.state, e.reason ? ` (${e.reason})` : "");
      refresh();
    } else if (e.kind === "report") {
      reports.append(el("h2", {}, e.name), el("table", { class: "report", "data-report": e.name },
        el("thead", {}, el("tr", {}, e.columns.map((c) => el("th", {}, c)))),
        el("tbody", {}, e.rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
    }
  };
  refresh().then(() => {
    const source = live(`/api/jobs/${encodeURIComponent(jobId)}/events`, {
      ev: onEvent,
      end: () => { source.close(); refresh(); },
    });
  }).catch((e) => app.replaceChildren(el("h1", {}, "Job not found"), notice(e.message)));
}

function sweepsPage(app) {
  const body = el("tbody");
  app.append(el("h1", {}, "Sweeps"), el("table", { id: "sweeps" },
    el("thead", {}, el("tr", {}, ["ID", "Name", "State", "Trials", "Metric", "Best", "Age"].map((h) => el("th", {}, h)))), body));
  api("/api/sweeps").then((d) => {
    body.replaceChildren(...d.sweeps.map((s) => el("tr", { "data-sweep": s.id },
      el("td", {}, el("a", { href: `/sweeps/${encodeURIComponent(s.id)}` }, s.id)), el("td", {}, s.name),
      el("td", {}, badge(s.state)), el("td", {}, `${s.trials}${s.grid_size ? ` / ${s.grid_size}` : ""}`),
      el("td", {}, `${s.metric} (${s.mode})`), el("td", {}, num(s.best_value)), el("td", {}, age(s.created)))));
    if (!d.sweeps.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "empty" }, "no sweeps")));
  }).catch((e) => app.append(notice(e.message)));
}

function sweepPage(app, sweepId) {
  const header = el("div", { id: "sweep-header" });
  const charts = el("div", { class: "charts" });
  const table = el("table", { id: "trials" });
  app.append(header, charts, el("h2", {}, "Trials"), table);
  let chart = null;
  const scatters = new Map(); // param -> its param-vs-metric Scatter
  let sweep = null;
  let sortKey = "value";
  let descending = true;
  const draw = () => {
    const params = [...new Set(sweep.trials.flatMap((t) => Object.keys(t.params)))].sort();
    const cols = [["number", "#"], ["job_state", "State"], ...params.map((p) => [`p:${p}`, p]), ["value", `${sweep.metric} (${sweep.mode})`], ["job_id", "Job"]];
    const key = (t) => (sortKey.startsWith("p:") ? t.params[sortKey.slice(2)] : t[sortKey]);
    const trials = [...sweep.trials].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === y) return a.number - b.number;
      if (x === null || x === undefined || x === "") return 1;
      if (y === null || y === undefined || y === "") return -1;
      return (x < y ? -1 : 1) * (descending ? -1 : 1);
    });
    header.replaceChildren(el("h1", {}, sweep.name, " ", el("small", {}, sweep.id)),
      el("p", {}, badge(sweep.state), ` ${sweep.trials.length}${sweep.grid_size ? ` of ${sweep.grid_size}` : ""} trials · best ${sweep.metric} ${num(sweep.best_value)}`,
        sweep.best_trial !== null ? ` (trial ${sweep.best_trial})` : ""));
    table.replaceChildren(
      el("thead", {}, el("tr", {}, cols.map(([k, label]) => el("th", {
        class: "sortable", "data-key": k, "aria-sort": k === sortKey ? (descending ? "descending" : "ascending") : null,
        onclick: () => { descending = k === sortKey ? !descending : true; sortKey = k; draw(); },
      }, label, k === sortKey ? (descending ? " ▼" : " ▲") : "")))),
      el("tbody", {}, trials.map((t) => el("tr", { class: t.best ? "best" : "", "data-trial": String(t.number) },
        el("td", {}, t.best ? `★ ${t.number}` : String(t.number)),
        el("td", {}, badge(t.job_state || t.trial_state)),
        params.map((p) => el("td", {}, t.params[p] ?? "-")),
        el("td", {}, num(t.value)),
        el("td", {}, t.job_id ? el("a", { href: `/jobs/${encodeURIComponent(t.job_id)}` }, t.job_id) : "-")))));
    if (!chart) chart = new Chart(charts, `Validation ${sweep.metric} by trial`, []);
    chart.setSeries(sweep.trials.filter((t) => t.curve.length).map((t) => ({ name: `${t.best ? "★ " : ""}trial ${t.number}`, points: t.curve })));
    for (const p of params) {
      if (!scatters.has(p)) scatters.set(p, new Scatter(charts, `${p} vs ${sweep.metric}`, p));
      scatters.get(p).set(sweep.trials.filter((t) => t.value !== null && t.params[p] !== undefined)
        .map((t) => ({ x: t.params[p], y: t.value, best: t.best })));
    }
  };
  live(`/api/sweeps/${encodeURIComponent(sweepId)}/stream`, { data: (d) => { sweep = d; draw(); } });
}

function workersPage(app) {
  const body = el("tbody");
  app.append(el("h1", {}, "Workers"), el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, ["ID", "Host", "State", "GPUs (free)", "CPUs", "Current job", "Last heartbeat"].map((h) => el("th", {}, h)))), body));
  live("/api/workers/stream", {
    data: (d) => {
      body.replaceChildren(...d.workers.map((w) => el("tr", { "data-worker": w.id },
        el("td", {}, w.id), el("td", {}, w.hostname), el("td", { title: w.why }, badge(w.state)),
        el("td", {}, `${w.gpus} (${w.free_gpus})${w.gpu_name ? ` ${w.gpu_name}` : ""}`), el("td", {}, String(w.cpus)),
        el("td", {}, w.jobs.length ? w.jobs.map((j) => el("a", { href: `/jobs/${encodeURIComponent(j)}` }, j, " ")) : "-"),
        el("td", {}, `${w.heartbeat_age_s}s ago`))));
      if (!d.workers.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "empty" }, "no workers registered")));
    },
  });
}

// A job or sweep this user cannot see (none by that id, or another user's): the server
// answered this page with 404 and put its reason in the (hidden) login form's message.
function missingPage(app, kind) {
  const message = document.getElementById("login-message").textContent;
  app.replaceChildren(el("h1", {}, kind === "sweep" ? "Sweep not found" : "Job not found"), notice(message));
}

document.addEventListener("DOMContentLoaded", () => {
  const { page, item } = document.body.dataset;
  const app = document.getElementById("app");
  if (page === "login") {
    document.querySelector("nav").hidden = true;
    document.querySelector(".logout").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("token").focus();
    return;
  }
  const nav = { job: "jobs", sweep: "sweeps" }[page] || page;
  document.querySelector(`[data-nav="${nav}"]`)?.classList.add("active");
  ({ jobs: jobsPage, job: jobPage, sweeps: sweepsPage, sweep: sweepPage, workers: workersPage, missing: missingPage })[page](app, item);
});

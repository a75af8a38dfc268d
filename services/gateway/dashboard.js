// The live dashboard: reads the public API with the operator's token, follows one job live.
// The token lives in sessionStorage only: it goes with the tab, and "Log out" clears it.
"use strict";
const setting = (name) => document.querySelector(`meta[name="${name}"]`).content;
const API = setting("streamjobs-api");
const WS_URL = setting("streamjobs-ws");
const TOKEN_KEY = "streamjobs-token";
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
// A token may come in the URL fragment (never sent to a server): kept, then wiped from the URL.
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
}
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  refresh();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenInput.value = "";
  if (socket) { socket.close(); socket = null; }
  for (const id of ["bands", "models", "jobs", "instances", "failed"]) $(id).tBodies[0].replaceChildren();
  for (const chart of Object.values(charts)) chart.destroy();
  for (const key of Object.keys(charts)) delete charts[key];
  $("tiles").replaceChildren();
  $("live").textContent = "Select a job above.";
  $("error").textContent = "logged out";
});

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function get(path) {
  const resp = await fetch(API + path, {
    headers: { Authorization: "Bearer " + tokenInput.value.trim() },
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.title || resp.statusText);
  return body;
}

async function post(path) {
  const resp = await fetch(API + path, {
    method: "POST",
    headers: { Authorization: "Bearer " + tokenInput.value.trim() },
  });
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  return { ok: resp.ok, status: resp.status, body };
}

function when(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : null;
}

// -- charts (uPlot): one per series family, the same steps on every x axis --------------
const STATUS_COLOURS = { submitted: "#5b6478", completed: "#1a7f37", failed: "#c62828", cancelled: "#8a6d00" };
const BAND_COLOURS = { urgent: "#c62828", high: "#e07b00", normal: "#1f5fd1", low: "#8a94a6" };
const charts = {};
$("window").addEventListener("change", () => refresh());

function lines(named, points) {
  return Object.entries(named).map(([label, stroke]) => ({
    label, stroke, width: 2, spanGaps: true, points: points ? { show: true, size: 6, fill: stroke } : {},
  }));
}

// Percentiles exist only for steps that had jobs: drawn as points, joined where there are several.
function draw(id, named, columns, t, points = false) {
  const el = $(id);
  const data = [t, ...columns];
  // What the chart holds, for a reader of the page (and its tests): points and their sum.
  el.dataset.points = String(t.length);
  el.dataset.total = String(columns.flat().reduce((a, v) => a + (v || 0), 0));
  const labels = Object.keys(named).join(",");
  if (charts[id] && charts[id].labels === labels) { charts[id].setData(data); return; }
  if (charts[id]) charts[id].destroy();
  const opts = {
    width: Math.max(360, el.clientWidth || 420), height: 200,
    series: [{}, ...lines(named, points)],
    scales: { x: { time: true } },
    axes: [{}, { size: 56 }],
    legend: { live: true },
  };
  charts[id] = new uPlot(opts, data, el);
  charts[id].labels = labels;
}

async function refreshCharts() {
  try {
    await drawCharts();
    $("charts-note").textContent = "";
  } catch (err) {
    $("charts-note").textContent = "charts: " + String(err.message || err);
  }
}

async function drawCharts() {
  const [span, step] = $("window").value.split("/").map(Number);
  const since = new Date(Date.now() - span * 1000).toISOString();
  const s = await get(`/analytics/series?since=${encodeURIComponent(since)}&step=${step}`);
  const statuses = Object.keys(STATUS_COLOURS).filter((k) => k in s.jobs_per_second);
  draw("chart-jobs", Object.fromEntries(statuses.map((k) => [k, STATUS_COLOURS[k]])),
    statuses.map((k) => s.jobs_per_second[k]), s.t);
  draw("chart-tokens", { "tokens/s": "#1f5fd1" }, [s.tokens_per_second], s.t);
  const bands = Object.keys(BAND_COLOURS).filter((k) => k in s.queue_depth);
  draw("chart-queue", Object.fromEntries(bands.map((k) => [k, BAND_COLOURS[k]])),
    bands.map((k) => s.queue_depth[k]), s.t);
  draw("chart-wait", { "wait p95 ms": "#e07b00" }, [s.queue_wait_p95_ms], s.t, true);
  draw("chart-ttft", { "ttft p95 ms": "#6a3fc1" }, [s.ttft_p95_ms], s.t, true);
}

// "p.jobs.high:0", "p.jobs.high:1", ... as "jobs.high 0,1": one entry per topic, prefix left out.
function partitions(assigned) {
  const byTopic = new Map();
  for (const tp of assigned) {
    const at = tp.lastIndexOf(":");
    const topic = tp.slice(0, at).split(".").slice(1).join(".");
    byTopic.set(topic, [...(byTopic.get(topic) || []), tp.slice(at + 1)]);
  }
  return [...byTopic].map(([topic, ps]) => `${topic} ${ps.join(",")}`).join(" · ") || "none";
}

// -- streamer instances (admin): an answer of 403 means this token is not an admin's ----
let isAdmin = false;
async function refreshInstances() {
  const resp = await fetch(API + "/instances", {
    headers: { Authorization: "Bearer " + tokenInput.value.trim() },
  });
  isAdmin = resp.ok;
  if (resp.status === 403) {
    $("instances").tBodies[0].replaceChildren();
    $("instances-note").textContent = "an admin token shows the streamer instances";
    return;
  }
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  if (!resp.ok || !body) {
    // Each panel answers for itself: the others are drawn even if this read fails.
    $("instances-note").textContent = "instances: " + ((body && body.title) || resp.statusText);
    return;
  }
  $("instances-note").textContent = body.items.length ? "" : "no streamer has sent a heartbeat lately";
  fill($("instances").tBodies[0], body.items.map((i) => {
    const tr = document.createElement("tr");
    tr.className = "instance " + i.state;
    tr.dataset.instance = i.instance_id;
    tr.append(cell(i.instance_id), cell(`${i.host}:${i.pid}`), cell(i.state, "state-" + i.state),
      cell(`${i.slots_in_use} / ${i.slots_total}`, "num slots"), cell(i.jobs_running, "num"),
      cell(i.jobs_waiting, "num"), cell(i.loop_lag_ms.toFixed(1) + (i.overloaded ? " (overloaded)" : ""), "num"),
      cell(partitions(i.partitions), "partitions"), cell(when(i.started_at)), cell(when(i.last_seen)));
    return tr;
  }));
}

// -- failed jobs, with their reasons; admins may run one again -------------------------
async function retry(jobId, button) {
  button.disabled = true;
  const out = $("retry-outcome");
  out.className = "note";
  out.textContent = `retrying ${jobId.slice(0, 8)}…`;
  try {
    const r = await post(`/jobs/${encodeURIComponent(jobId)}/retry`);
    if (r.ok && r.body && r.body.job_id) {
      out.textContent = `${jobId.slice(0, 8)} runs again as ${r.body.job_id}`;
    } else {
      const why = r.body ? [r.body.title, r.body.detail].filter(Boolean).join(": ") : "";
      out.className = "note bad";
      out.textContent = `retry of ${jobId.slice(0, 8)} refused (${r.status}${why ? ", " + why : ""})`;
    }
  } catch (err) {
    out.className = "note bad";
    out.textContent = `retry of ${jobId.slice(0, 8)} failed: ${err.message || err}`;
  } finally {
    button.disabled = false;
  }
}

async function refreshFailed() {
  const page = await get("/jobs?status=failed&limit=20");
  fill($("failed").tBodies[0], page.items.map((j) => {
    const tr = document.createElement("tr");
    tr.className = "failed-job";
    tr.dataset.job = j.job_id;
    const action = document.createElement("td");
    if (isAdmin) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "retry";
      button.textContent = "Retry";
      button.addEventListener("click", () => retry(j.job_id, button));
      action.append(button);
    }
    tr.append(cell(j.job_id.slice(0, 8)), cell(j.user_id), cell(j.job_type), cell(j.priority),
      cell(j.attempt, "num"), cell(when(j.finished_at)), cell(j.error, "reason"), action);
    return tr;
  }));
}

function round(value) {
  return value === null || value === undefined ? null : Math.round(value);
}

async function refresh() {
  if (!tokenInput.value.trim()) { $("error").textContent = "enter an API token"; return; }
  const since = new Date(Date.now() - 3600 * 1000).toISOString();
  try {
    await refreshInstances();
    const [bands, models, jobs] = await Promise.all([
      get(`/analytics?group_by=priority&since=${encodeURIComponent(since)}`),
      get(`/analytics?group_by=model&since=${encodeURIComponent(since)}`),
      get("/jobs?limit=25"),
      refreshCharts(),
      refreshFailed(),
    ]);
    $("error").textContent = "";
    const t = bands.totals;
    const tiles = [
      ["jobs", t.jobs],
      ["completed", t.by_status.completed || 0],
      ["running", (t.by_status.running || 0) + (t.by_status.retrying || 0)],
      ["queued", t.by_status.queued || 0],
      ["failed", t.by_status.failed || 0],
      ["success rate", t.success_rate === null ? "–" : (t.success_rate * 100).toFixed(1) + " %"],
      ["tokens", t.total_tokens],
      ["cost", "$" + t.cost_usd.toFixed(4)],
    ];
    $("tiles").replaceChildren(...tiles.map(([label, value]) => {
      const div = document.createElement("div");
      div.className = "tile";
      div.textContent = label;
      const b = document.createElement("b");
      b.textContent = value;
      div.prepend(b);
      return div;
    }));
    const rank = { urgent: 0, high: 1, normal: 2, low: 3 };
    bands.rows.sort((a, b) => rank[a.priority] - rank[b.priority]);
    fill($("bands").tBodies[0], bands.rows.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.priority), cell(r.jobs, "num"), cell(r.by_status.queued || 0, "num"),
        cell(r.by_status.running || 0, "num"), cell(r.by_status.failed || 0, "num"),
        cell(round(r.queue_wait_ms.p95), "num"), cell(round(r.time_to_first_token_ms.p50), "num"));
      return tr;
    }));
    fill($("models").tBodies[0], models.rows.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.model), cell(r.jobs, "num"), cell(r.total_tokens, "num"),
        cell(round(r.tokens_per_second.p50), "num"), cell(r.cost_usd.toFixed(4), "num"));
      return tr;
    }));
    fill($("jobs").tBodies[0], jobs.items.map((j) => {
      const tr = document.createElement("tr");
      tr.className = "job";
      tr.append(cell(j.job_id.slice(0, 8)), cell(j.user_id), cell(j.job_type), cell(j.priority),
        cell(j.status, "status-" + j.status), cell(j.attempt, "num"),
        cell(j.model),
        cell(j.submitted_at ? new Date(j.submitted_at).toLocaleTimeString() : null));
      tr.addEventListener("click", () => watch(j.job_id));
      return tr;
    }));
  } catch (err) {
    $("error").textContent = String(err.message || err);
  }
}

let socket = null;
function watch(jobId) {
  if (socket) socket.close();
  $("live-title").textContent = "Live stream of " + jobId;
  $("live").textContent = "";
  socket = new WebSocket(WS_URL);
  let attempt = 0;
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "auth", token: tokenInput.value.trim() }));
    socket.send(JSON.stringify({ type: "subscribe", channel: "job:" + jobId, last_seq: -1 }));
  };
  socket.onmessage = (msg) => {
    const frame = JSON.parse(msg.data);
    if (frame.type === "chunk") {
      if (frame.attempt !== attempt) { $("live").textContent = ""; attempt = frame.attempt; }
      $("live").textContent += frame.text;
    } else if (frame.type === "event") {
      $("live").textContent += `\n[${frame.event}]`;
    } else if (frame.type === "error") {
      $("live").textContent += `\n[error: ${frame.message}]`;
    }
  };
}

refresh();
setInterval(refresh, 2000);

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
  for (const id of ["bands", "models", "jobs"]) $(id).tBodies[0].replaceChildren();
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

function round(value) {
  return value === null || value === undefined ? null : Math.round(value);
}

async function refresh() {
  if (!tokenInput.value.trim()) { $("error").textContent = "enter an API token"; return; }
  const since = new Date(Date.now() - 3600 * 1000).toISOString();
  try {
    const [bands, models, jobs] = await Promise.all([
      get(`/analytics?group_by=priority&since=${encodeURIComponent(since)}`),
      get(`/analytics?group_by=model&since=${encodeURIComponent(since)}`),
      get("/jobs?limit=25"),
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

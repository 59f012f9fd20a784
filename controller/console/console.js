// pushcast console: plain DOM, no framework, no build step. Data comes from the REST
// API (the same token, as an Authorization header) and from /console/events, a
// server-sent event stream read with fetch (EventSource cannot send the header).
// Everything shown is set with textContent: nothing from the server becomes markup.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "pushcast.token";
const rateHistory = new Map(); // task key → bitrates (b/s), the last 3 minutes
const HISTORY = 180;
let following = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
// X-Requested-With: the API then answers a bad token without a challenge, which the
// browser would otherwise turn into its own login dialog.
function auth() { return { Authorization: "Basic " + btoa(token()), "X-Requested-With": "XMLHttpRequest" }; }
function vhost() { return $("vhost").value.trim() || "default"; }

async function api(method, path, body) {
  const headers = auth();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await r.json(); } catch (_) { /* not JSON */ }
  return { status: r.status, json };
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function rate(bps) {
  if (!bps) return "0";
  if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mb/s";
  return Math.round(bps / 1e3) + " kb/s";
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 28");
  svg.setAttribute("role", "img");
  const last = values.length ? values[values.length - 1] : 0;
  svg.setAttribute("aria-label", "bitrate over the last minutes, now " + rate(last));
  const max = Math.max(1, ...values);
  const step = 160 / Math.max(1, HISTORY - 1);
  const offset = HISTORY - values.length;
  const points = values.map((v, i) => ((offset + i) * step).toFixed(1) + "," + (27 - (v / max) * 26).toFixed(1));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  return svg;
}

function say(text, error) {
  const p = $("action-result");
  p.textContent = text;
  p.className = error ? "error" : "";
}

async function act(method, path, body, done) {
  const r = await api(method, path, body);
  if (r.status === 200) say(done);
  else say((r.json && r.json.message) || ("HTTP " + r.status), true);
  return r;
}

function renderStreams(streams) {
  const body = $("streams").tBodies[0];
  body.replaceChildren();
  for (const s of streams) {
    const h = s.health || {};
    const codecs = h.codecs || (s.tracks || []).map((t) => t.split(":").pop());
    const shape = (h.width ? h.width + "×" + h.height + " " : "") + (h.fps ? h.fps + " fps " : "") +
      (h.bitrate ? rate(h.bitrate) : "");
    const who = [s.client, h.encoder || s.software].filter(Boolean).join(" · ");
    const tr = el("tr", null, { "data-stream": s.app + "/" + s.name });
    tr.append(el("td", s.app), el("th", s.name, { scope: "row" }), el("td", s.worker),
      el("td", codecs.join(", "), { class: "codecs" }),
      el("td", shape, { class: "stream-health", "data-bps": String(h.bitrate || 0) }),
      el("td", who, { class: "encoder" }),
      el("td", (s.input || "") + (s.inputs > 1 ? " (+ standby)" : "")),
      el("td", s.interrupted ? "interrupted since " + s.interrupted : "live"));
    body.appendChild(tr);
  }
}

function renderTasks(tasks) {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  const seen = new Set();
  for (const t of tasks) {
    const key = t.app + "/" + t.id;
    seen.add(key);
    const values = rateHistory.get(key) || [];
    values.push(t.bitrate || 0);
    while (values.length > HISTORY) values.shift();
    rateHistory.set(key, values);
    const tr = el("tr", null, { "data-task": key });
    const dests = el("ul", null, { class: "dests" });
    const list = t.destinations || [{ url: t.url, streamKey: t.streamKey, state: t.state, protocol: t.protocol }];
    for (const d of list) {
      const li = el("li", null, { "data-destination": d.url + "/" + (d.streamKey || "") });
      li.append(el("span", d.protocol + " " + d.url + (d.streamKey ? "/" + "•".repeat(4) : "") + ": "),
        el("span", d.state, { class: "dest-state state-" + d.state }));
      if (t.destinations && t.destinations.length > 1) {
        const rm = el("button", "Remove", { type: "button", class: "secondary remove",
          "aria-label": "Remove destination " + d.url + " from " + t.id });
        rm.addEventListener("click", () => act("POST",
          "/v1/vhosts/" + vhost() + "/apps/" + t.app + ":updatePush",
          { id: t.id, removeDestinations: [{ url: d.url, streamKey: d.streamKey || "" }] },
          "destination removed from " + t.id));
        li.append(" ", rm);
      }
      dests.appendChild(li);
    }
    const stop = el("button", "Stop", { type: "button", class: "stop", "aria-label": "Stop push " + t.id });
    stop.addEventListener("click", () => act("POST", "/v1/vhosts/" + vhost() + "/apps/" + t.app + ":stopPush",
      { id: t.id }, "stopped " + t.id));
    const actions = el("td");
    actions.appendChild(stop);
    tr.append(el("td", t.app), el("th", t.id, { scope: "row" }), el("td", t.stream && t.stream.name),
      el("td", t.state, { class: "state state-" + t.state }),
      el("td", rate(t.bitrate) + (t.fps ? " · " + t.fps + " fps" : ""), { class: "bitrate", "data-bps": String(t.bitrate || 0) }),
      el("td"), el("td"), el("td", t.lastError || "", { class: "last-error" }), actions);
    tr.children[5].appendChild(sparkline(values));
    tr.children[6].appendChild(dests);
    body.appendChild(tr);
  }
  for (const k of [...rateHistory.keys()]) if (!seen.has(k)) rateHistory.delete(k);
}

function renderWorkers(workers) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of workers) {
    const tr = el("tr", null, { "data-worker": w.name });
    tr.append(el("th", w.name, { scope: "row" }), el("td", w.address), el("td", w.pushes),
      el("td", w.maxSessions ? w.maxSessions : "no limit"), el("td", w.draining ? "yes" : "no"));
    body.appendChild(tr);
  }
}

function renderApps(apps) {
  const box = $("apps");
  box.replaceChildren();
  for (const a of apps) {
    const d = el("details", null, { "data-app": a.name });
    d.appendChild(el("summary", a.name + (a.openPublish ? " (open publishing)" : "")));
    const rules = a.rules || [];
    d.appendChild(el("p", rules.length ? "Rules:" : "No auto-push rules."));
    for (const r of rules) {
      d.appendChild(el("p", r.name + ": streams " + r.stream + " → " +
        r.destinations.map((x) => x.protocol + " " + x.url).join(", ")));
    }
    const cb = a.callbacks || {};
    d.appendChild(el("p", "Callbacks: publish " + (cb.publish || []).length + ", status " +
      (cb.status || []).length + (cb.authorize ? ", authorization" : "")));
    if (a.reconnectWindowMs) d.appendChild(el("p", "Reconnect window: " + a.reconnectWindowMs + " ms"));
    box.appendChild(d);
  }
}

function render(snapshot) {
  renderStreams(snapshot.streams || []);
  renderTasks(snapshot.tasks || []);
  renderWorkers(snapshot.workers || []);
  renderApps(snapshot.apps || []);
  $("live-status").textContent = "live · " + new Date().toLocaleTimeString();
}

// Follows /console/events until logged out; reconnects after a second on any break.
async function follow() {
  const mine = following = new AbortController();
  while (following === mine && token()) {
    try {
      const r = await fetch("/console/events?vhost=" + encodeURIComponent(vhost()),
        { headers: auth(), signal: mine.signal });
      if (r.status === 401) { logout("The token was refused."); return; }
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += text.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      if (mine.signal.aborted) return;
      $("live-status").textContent = "reconnecting…";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("nav").hidden = false;
  follow();
}

function logout(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (following) following.abort();
  following = null;
  $("app").hidden = true;
  $("nav").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why || "";
  $("token").focus();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  const r = await api("GET", "/v1/vhosts");
  if (r.status === 200) { $("token").value = ""; showApp(); }
  else logout(r.status === 401 ? "That token is not accepted." : "The API answered " + r.status + ".");
});
$("logout").addEventListener("click", () => logout());
$("vhost").addEventListener("change", () => { if (following) following.abort(); follow(); });

$("start-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = { id: $("start-id").value, stream: { name: $("start-stream").value },
    protocol: $("start-protocol").value, url: $("start-url").value };
  if ($("start-key").value) body.streamKey = $("start-key").value;
  act("POST", "/v1/vhosts/" + vhost() + "/apps/" + $("start-app").value + ":startPush", body, "started " + body.id);
});
$("add-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const d = { protocol: $("add-protocol").value, url: $("add-url").value };
  if ($("add-key").value) d.streamKey = $("add-key").value;
  act("POST", "/v1/vhosts/" + vhost() + "/apps/" + $("add-app").value + ":updatePush",
    { id: $("add-id").value, addDestinations: [d] }, "destination added to " + $("add-id").value);
});

async function streamKey(action, flags, done) {
  const r = await act("POST", "/v1/vhosts/" + vhost() + "/apps/" + $("key-app").value + ":" + action,
    Object.assign({ stream: $("key-stream").value }, flags), done);
  $("key-shown").textContent = r.status === 200 && r.json.response ? r.json.response.streamKey : "";
  // Shown once: masked after a minute, or at once with Hide.
  clearTimeout(streamKey.mask);
  streamKey.mask = setTimeout(() => { if ($("key-shown").textContent) $("key-shown").textContent = "••••••••"; }, 60000);
}
$("key-form").addEventListener("submit", (ev) => { ev.preventDefault(); streamKey("streamKey", {}, "key issued"); });
$("key-regenerate").addEventListener("click", () => streamKey("streamKey", { regenerate: true }, "key regenerated"));
$("key-revoke").addEventListener("click", () => streamKey("deleteStreamKey", { disconnect: true }, "key revoked"));
$("key-hide").addEventListener("click", () => { $("key-shown").textContent = "••••••••"; });

if (token()) showApp(); else $("token").focus();

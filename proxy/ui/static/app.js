// The fwdproxy traffic page. Recorded content is data: it reaches the DOM only through
// textContent, attributes set as properties on elements made here, and URLs built from
// numeric ids. Nothing recorded is ever parsed as markup: no HTML strings are built here.
"use strict";

const PAGE = 200;         // rows per request
const MAX_ROWS = 3000;    // rows kept in the table; older ones are fetched again on scroll
const $ = (id) => document.getElementById(id);

const state = {
  rows: new Map(),        // id -> {row, tr}
  order: [],              // ids, oldest first
  selected: null,
  paused: false,
  source: null,
  cursor: 0,              // newest id the list has seen (the live stream resumes after it)
  hasOlder: false,
  loadingOlder: false,
  generation: 0,          // bumped on every reload: late answers of an old query are ignored
  detailFor: null,
  curl: "",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function size(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function ms(v) {
  if (v < 0) return "";
  return v < 10 ? v.toFixed(1) + " ms" : v < 10000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
}

function query() {
  const params = new URLSearchParams();
  for (const id of ["f-host", "f-method", "f-status", "f-q"]) {
    const input = $(id);
    if (input.value.trim()) params.set(input.name, input.value.trim());
  }
  return params;
}

async function getJSON(url, options) {
  const resp = await fetch(url, Object.assign({credentials: "same-origin", cache: "no-store"}, options || {}));
  if (!resp.ok) throw new Error((await resp.text()).trim() || resp.status + " " + resp.statusText);
  return resp.json();
}

// -- the list --------------------------------------------------------------------------

function statusClass(row) {
  const classes = [];
  if (row.error || row.status === 0) classes.push("err");
  else classes.push("s" + Math.floor(row.status / 100));
  if (row.kind === "tunnel") classes.push("tunnel");
  return classes.join(" ");
}

function makeRow(row) {
  const tr = el("tr", statusClass(row));
  tr.dataset.id = String(row.id);
  const cells = [
    ["c-id", row.id],
    ["c-method", row.method],
    ["c-host", row.host],
    ["c-path", row.kind === "tunnel" ? "(tunnel)" : row.path],
    ["c-status", row.status ? row.status : (row.error ? "error" : "-")],
    ["c-type", row.type],
    ["c-size", row.kind === "tunnel" ? size(row.up) + " / " + size(row.down) : size(row.down)],
    ["c-ms", ms(row.ms)],
  ];
  for (const [cls, text] of cells) tr.append(el("td", cls, text));
  tr.title = row.error ? row.url + "\n" + row.error : row.url;
  tr.addEventListener("click", () => select(row.id));
  return tr;
}

function atBottom() {
  const list = $("list");
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function append(rows) {
  const follow = atBottom();
  const body = $("rows");
  for (const row of rows) {
    state.cursor = Math.max(state.cursor, row.id);
    if (state.rows.has(row.id)) continue;
    const tr = makeRow(row);
    state.rows.set(row.id, {row, tr});
    state.order.push(row.id);
    body.append(tr);
  }
  if (follow) {
    while (state.order.length > MAX_ROWS) dropOldest();
    $("list").scrollTop = $("list").scrollHeight;
  }
  $("empty").hidden = state.order.length > 0;
}

function dropOldest() {
  const id = state.order.shift();
  const entry = state.rows.get(id);
  state.rows.delete(id);
  entry.tr.remove();
  state.hasOlder = true;
}

function prepend(rows) {
  const list = $("list");
  const before = list.scrollHeight;
  const body = $("rows");
  const first = body.firstChild;
  const fresh = rows.filter((row) => !state.rows.has(row.id));
  for (const row of fresh) {
    const tr = makeRow(row);
    state.rows.set(row.id, {row, tr});
    body.insertBefore(tr, first);
  }
  state.order = fresh.map((row) => row.id).concat(state.order);
  list.scrollTop += list.scrollHeight - before;
}

function setCount(total) {
  $("count").textContent = total === 1 ? "1 flow" : total.toLocaleString("en") + " flows";
}

async function reload() {
  const generation = ++state.generation;
  closeStream();
  const params = query();
  $("har").href = "/api/har?" + params.toString();
  params.set("limit", PAGE);
  let data;
  try {
    data = await getJSON("/api/flows?" + params.toString());
  } catch (err) {
    showStatus("cannot load flows: " + err.message);
    return;
  }
  if (generation !== state.generation) return;
  state.rows.clear();
  state.order = [];
  $("rows").replaceChildren();
  state.cursor = data.cursor;
  state.hasOlder = data.rows.length === PAGE;
  append(data.rows);
  if (state.rows.has(state.selected)) state.rows.get(state.selected).tr.classList.add("selected");
  $("list").scrollTop = $("list").scrollHeight;
  setCount(data.total);
  const mode = data.live ? "recording to " : "saved capture ";
  showStatus(mode + data.store + (data.cleared_through ? " · cleared: flows up to #" + data.cleared_through + " hidden" : ""));
  if (!state.paused) openStream();
}

async function loadOlder() {
  if (!state.hasOlder || state.loadingOlder || state.order.length === 0) return;
  state.loadingOlder = true;
  const generation = state.generation;
  const params = query();
  params.set("limit", PAGE);
  params.set("before", state.order[0]);
  try {
    const data = await getJSON("/api/flows?" + params.toString());
    if (generation !== state.generation) return;
    state.hasOlder = data.rows.length === PAGE;
    prepend(data.rows);
  } catch (err) {
    showStatus("cannot load older flows: " + err.message);
  } finally {
    state.loadingOlder = false;
  }
}

// -- live updates (Server-Sent Events) --------------------------------------------------

function openStream() {
  const params = query();
  params.set("after", state.cursor);
  const source = new EventSource("/api/events?" + params.toString());
  state.source = source;
  source.onopen = () => setLive(state.paused ? "paused" : "live");
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    append(data.rows);
    setCount(data.total);
  };
  source.onerror = () => setLive("down");
}

function closeStream() {
  if (state.source) state.source.close();
  state.source = null;
}

function setLive(mode) {
  const live = $("live");
  live.className = "live" + (mode === "live" ? "" : " " + mode);
  live.textContent = mode === "live" ? "live" : mode === "paused" ? "paused" : "reconnecting";
}

function togglePause() {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  $("pause").classList.toggle("on", state.paused);
  if (state.paused) {
    closeStream();
    setLive("paused");
  } else {
    openStream();  // resumes after the newest flow shown: nothing recorded meanwhile is lost
  }
}

async function clearAll() {
  try {
    await getJSON("/api/clear", {method: "POST", headers: {"X-Fwdproxy-UI": "1"}});
  } catch (err) {
    showStatus("cannot clear: " + err.message);
    return;
  }
  closeDetail();
  reload();
}

// -- selection and keyboard -------------------------------------------------------------

function select(id) {
  if (!state.rows.has(id)) return;
  if (state.selected !== null && state.rows.has(state.selected)) {
    state.rows.get(state.selected).tr.classList.remove("selected");
  }
  state.selected = id;
  const tr = state.rows.get(id).tr;
  tr.classList.add("selected");
  tr.scrollIntoView({block: "nearest"});
  openDetail(id);
}

function move(step) {
  if (state.order.length === 0) return;
  let index = state.selected === null ? -1 : state.order.indexOf(state.selected);
  if (index < 0) index = step > 0 ? -1 : state.order.length;
  const next = Math.max(0, Math.min(state.order.length - 1, index + step));
  select(state.order[next]);
  if (next === 0) loadOlder();
}

function onKey(event) {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
  if (event.key === "Escape") {
    if (typing) event.target.blur(); else closeDetail();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const moves = {ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: 20, PageUp: -20,
                 End: Number.MAX_SAFE_INTEGER, Home: -Number.MAX_SAFE_INTEGER};
  if (event.key in moves) {
    move(moves[event.key]);
  } else if (event.key === "Enter" && state.selected !== null) {
    openDetail(state.selected);
  } else if (event.key === "/") {
    $("f-q").focus();
  } else if (event.key === "p") {
    togglePause();
  } else if (event.key === "c" && state.curl) {
    copyCurl();
  } else {
    return;
  }
  event.preventDefault();
}

// -- the detail pane --------------------------------------------------------------------

function closeDetail() {
  $("detail").hidden = true;
  state.detailFor = null;
  state.curl = "";
}

async function openDetail(id) {
  state.detailFor = id;
  let flow;
  try {
    flow = await getJSON("/api/flows/" + id);
  } catch (err) {
    showStatus("cannot load flow " + id + ": " + err.message);
    return;
  }
  if (state.detailFor !== id) return;
  state.curl = flow.curl;
  $("d-title").textContent = "#" + flow.id + " " + flow.method + " " + flow.url;
  $("d-body").replaceChildren(...renderFlow(flow));
  $("detail").hidden = false;
}

function renderFlow(flow) {
  const parts = [];
  const summary = [
    ["URL", flow.url],
    ["status", flow.status ? (flow.status + " " + flow.reason).trim() : "no response"],
    ["started", new Date(flow.started * 1000).toISOString().replace("T", " ").replace("Z", " UTC")],
    ["duration", ms(flow.duration_ms)],
    ["client", flow.client],
    ["kind", flow.kind + (flow.upstream_reused === null ? "" : flow.upstream_reused ? ", upstream reused" : ", new upstream connection")],
  ];
  if (flow.intercepted) summary.push(["TLS", "intercepted by the proxy"]);
  if (flow.upstream_tls) summary.push(["origin TLS", "certificate " + flow.upstream_tls]);
  if (flow.parent) summary.push(["parent proxy", flow.parent]);
  parts.push(keyValues(summary));
  if (flow.error) {
    parts.push(el("div", "error-box", flow.error + (flow.error_kind ? "  (Proxy-Status " + flow.error_kind + ")" : "")));
  }
  if (flow.faults.length) {
    parts.push(el("h3", "", "faults fired"));
    const box = el("div");
    for (const fault of flow.faults) box.append(el("span", "fault", fault));
    parts.push(box);
  }
  if (flow.rules.length) {
    parts.push(el("h3", "", "rules fired"));
    const list = el("ul", "rules");
    list.id = "d-rules";
    for (const rule of flow.rules) list.append(el("li", "", rule));
    parts.push(list);
  }
  const waterfall = renderTimings(flow);
  if (waterfall) parts.push(el("h3", "", "timings"), waterfall);
  parts.push(el("h3", "", "request headers"), keyValues(flow.request.headers, "request-headers"));
  parts.push(...renderBody("request body", flow.request.body, flow.id, "request"));
  if (flow.status) {
    parts.push(el("h3", "", "response headers"), keyValues(flow.response.headers, "response-headers"));
    parts.push(...renderBody("response body", flow.response.body, flow.id, "response"));
    if (flow.response.trailers.length) {
      parts.push(el("h3", "", "response trailers"), keyValues(flow.response.trailers, "response-trailers"));
    }
  }
  parts.push(el("h3", "", "as curl"));
  const curl = el("pre", "curl", flow.curl);
  curl.id = "d-curl-text";
  parts.push(curl);
  return parts;
}

function keyValues(pairs, className) {
  const table = el("table", "kv" + (className ? " " + className : ""));
  for (const [name, value] of pairs) {
    const tr = el("tr");
    tr.append(el("td", "", name), el("td", "", value));
    table.append(tr);
  }
  return table;
}

function renderBody(title, body, id, part) {
  const nodes = [];
  if (body.kind === "empty") return nodes;
  const heading = el("h3", "", title + " · " + size(body.size) + (body.type ? " · " + body.type : ""));
  nodes.push(heading);
  if (body.note) nodes.push(el("p", "note", body.note));
  if (body.kind === "json" || body.kind === "text") {
    const pre = el("pre", "body " + body.kind, body.text);
    pre.dataset.part = part;
    nodes.push(pre);
  } else if (body.kind === "image") {
    const img = el("img", "body-image");
    img.alt = part + " image";
    img.src = "/api/flows/" + Number(id) + "/body/" + (part === "request" ? "request" : "response");
    nodes.push(img);
  } else if (body.kind === "binary") {
    nodes.push(el("p", "note", size(body.decoded_size) + " of binary data; the first bytes:"));
    nodes.push(el("pre", "hex", body.hex));
  }
  return nodes;
}

function renderTimings(flow) {
  const t = flow.timings;
  const phases = ["connect", "send", "wait", "receive"].filter((name) => t[name] >= 0);
  if (phases.length === 0) return null;
  const total = Math.max(flow.duration_ms, phases.reduce((sum, name) => sum + t[name], 0), 0.001);
  const grid = el("div", "waterfall");
  let offset = 0;
  for (const name of phases) {
    const track = el("div", "track");
    const seg = el("div", "seg " + name);
    // CSSOM, not a style attribute: allowed under the page's Content-Security-Policy.
    seg.style.left = (offset / total * 100).toFixed(2) + "%";
    seg.style.width = (t[name] / total * 100).toFixed(2) + "%";
    track.append(seg);
    grid.append(el("span", "", name), track, el("span", "ms", ms(t[name])));
    offset += t[name];
  }
  return grid;
}

async function copyCurl() {
  if (!state.curl) return;
  try {
    await navigator.clipboard.writeText(state.curl);
    showStatus("copied the request as a curl command");
  } catch (err) {
    const pre = $("d-curl-text");
    if (pre) window.getSelection().selectAllChildren(pre);
    showStatus("the clipboard is not available here: the command is selected, copy it with Ctrl+C");
  }
}

function showStatus(text) {
  $("status-line").textContent = text;
}

// -- wiring -----------------------------------------------------------------------------

function debounce(fn, wait) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, wait);
  };
}

function start() {
  const later = debounce(reload, 250);
  for (const id of ["f-host", "f-q"]) $(id).addEventListener("input", later);
  for (const id of ["f-method", "f-status"]) $(id).addEventListener("change", reload);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); reload(); });
  $("pause").addEventListener("click", togglePause);
  $("clear").addEventListener("click", clearAll);
  $("d-close").addEventListener("click", closeDetail);
  $("d-curl").addEventListener("click", copyCurl);
  $("list").addEventListener("scroll", () => { if ($("list").scrollTop < 60) loadOlder(); });
  document.addEventListener("keydown", onKey);
  setLive("live");
  reload();
}

document.addEventListener("DOMContentLoaded", start);

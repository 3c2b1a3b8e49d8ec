// twotower demo page: plain JS over the public API (relative URLs: works under any route prefix).
// The hour and day controls set `context.timestamp` to that hour of that weekday in the week of Monday
// 2024-01-01 (UTC); every context field of GET v1/model has its own control (fields derived from the
// timestamp can be overridden one by one).
"use strict";

const REF_MONDAY = 1704067200;                 // 2024-01-01T00:00:00Z, a Monday (unix seconds)
const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const $ = (id) => document.getElementById(id);
const state = { model: null, userId: null, known: false, seq: 0, similarSeq: 0 };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// One API call; a non-2xx answer throws an Error whose message is the server's readable message.
async function api(method, path, body) {
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { /* not JSON: a proxy's answer */ }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const what = data && data.message ? data.message : (text.trim() || response.statusText);
    throw new Error(`${method} ${path}: HTTP ${response.status}: ${what}` + (retry ? ` (retry after ${retry} s)` : ""));
  }
  return data;
}

function showError(err) {
  const box = $("error");
  box.hidden = !err;
  box.textContent = err ? err.message || String(err) : "";
}

// ---- controls, one per feature kind ------------------------------------------------------------------
function control(f, id, optional) {
  if (f.kind === "categorical" && f.values) {
    const s = el("select", { id });
    if (optional) s.append(el("option", { value: "", text: "(not set)" }));
    f.values.forEach((v) => s.append(el("option", { value: v, text: v })));
    return s;
  }
  if (f.kind === "categorical") {
    return el("input", { id, type: "number", min: optional ? 0 : 1, max: f.cardinality - 1, step: 1,
                         value: optional ? "" : 1 });
  }
  if (f.kind === "numeric" || f.kind === "bucketized") {
    return el("input", { id, type: "number", step: "any", value: optional ? "" : 0 });
  }
  const hint = f.kind === "vector" ? `${f.dim} numbers, comma separated`
    : f.kind === "multi_hot" ? `values, comma separated${f.values ? ": " + f.values.slice(0, 5).join(", ") : ""}`
    : "text";
  return el("input", { id, type: "text", placeholder: hint,
                       value: f.kind === "vector" && !optional ? Array(f.dim).fill(0).join(",") : "" });
}

// The JSON value of a control, or undefined when it is empty.
function valueOf(f, input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (f.kind === "numeric" || f.kind === "bucketized" || (f.kind === "categorical" && !f.values)) return Number(raw);
  if (f.kind === "categorical" || f.kind === "hashed_bag") return raw;
  const parts = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return f.kind === "vector" ? parts.map(Number) : parts;
}

function field(f, prefix, optional) {
  const input = control(f, `${prefix}-${f.name}`, optional);
  const label = el("label", {}, `${f.name} `, input);
  input.addEventListener("change", refresh);
  return label;
}

function buildContextControls(model) {
  const box = $("context-fields");
  box.replaceChildren();
  if (model.accepts_timestamp) {
    $("time-controls").hidden = false;
    for (let h = 0; h < 24; h++) $("hour").append(el("option", { value: h, text: `${String(h).padStart(2, "0")}:00` }));
    DAYS.forEach((d, i) => $("day").append(el("option", { value: i + 1, text: d })));
    $("hour").value = "12";
    $("hour").addEventListener("change", refresh);
    $("day").addEventListener("change", refresh);
  }
  for (const f of model.context_schema) {
    const label = field(f, "ctx", f.source === "timestamp");
    if (f.source === "timestamp") {           // derived from the time: shown, overridable
      label.querySelector("input, select").title = "leave empty to derive it from the hour and day";
      label.append(el("span", { class: "derived", id: `derived-${f.name}` }));
    }
    box.append(label);
  }
  $("user-features").replaceChildren(...model.user_feature_schema.map((f) => field(f, "uf", true)));
}

function contextBody() {
  const ctx = {};
  if (state.model.accepts_timestamp) {
    ctx.timestamp = REF_MONDAY + (Number($("day").value) - 1) * 86400 + Number($("hour").value) * 3600;
  }
  for (const f of state.model.context_schema) {
    const v = valueOf(f, $(`ctx-${f.name}`));
    if (v !== undefined) ctx[f.name] = v;
  }
  return ctx;
}

function userFeatures() {
  const out = {};
  for (const f of state.model.user_feature_schema) {
    const v = valueOf(f, $(`uf-${f.name}`));
    if (v !== undefined) out[f.name] = v;
  }
  return out;
}

// ---- results -----------------------------------------------------------------------------------------
function itemRow(it, onClick) {
  const li = el("li", { "data-item-id": it.item_id, "data-score": String(it.score) });
  const name = it.title ? `${it.title}` : `item ${it.item_id}`;
  const button = el("button", { type: "button", title: `item ${it.item_id}` , text: name });
  if (onClick) button.addEventListener("click", () => onClick(it)); else button.disabled = true;
  li.append(button, el("span", { class: "score", text: it.score.toFixed(4) }));
  return li;
}

async function refresh() {
  if (!state.model || !state.userId) return;
  const seq = ++state.seq;
  const body = { user_id: state.userId, k: Math.max(1, Math.min(100, Number($("k").value) || 10)),
                 context: contextBody() };
  if (!state.known) {
    const uf = userFeatures();
    if (Object.keys(uf).length) body.user_features = uf;
  }
  const list = $("results");
  list.dataset.state = "loading";
  try {
    const r = await api("POST", "v1/recommend", body);
    if (seq !== state.seq) return;                          // a newer request is under way
    showError(null);
    list.replaceChildren(...r.items.map((it) => itemRow(it, showSimilar)));
    $("path").textContent = r.path === "model" ? "model" : `cold start: ${r.cold_start_strategy}`;
    for (const f of state.model.context_schema) {
      const d = $(`derived-${f.name}`);
      const v = r.context[f.name];
      if (d) d.textContent = `= ${f.values && Number.isInteger(v) && f.values[v - 1] ? f.values[v - 1] : formatValue(v)}`;
    }
    list.dataset.request = JSON.stringify(body);
    list.dataset.path = r.path;
    list.dataset.state = "ready";
  } catch (e) {
    if (seq !== state.seq) return;
    showError(e);
    list.dataset.state = "error";
  }
  list.dataset.seq = String(seq);
}

function formatValue(v) {
  if (v === undefined || v === null) return "";
  if (Array.isArray(v)) return `[${v.map(formatValue).join(", ")}]`;
  return Number.isInteger(v) ? String(v) : Number(v).toFixed(3);
}

async function showSimilar(item) {
  const seq = ++state.similarSeq;
  const list = $("similar");
  $("similar-box").hidden = false;
  $("similar-title").textContent = item.title || `item ${item.item_id}`;
  list.dataset.state = "loading";
  try {
    const r = await api("POST", "v1/similar-items", { item_id: item.item_id, k: 10 });
    if (seq !== state.similarSeq) return;
    showError(null);
    list.replaceChildren(...r.items.map((it) => itemRow(it, showSimilar)));
    list.dataset.itemId = item.item_id;
    list.dataset.state = "ready";
  } catch (e) {
    if (seq === state.similarSeq) { showError(e); list.dataset.state = "error"; }
  }
}

// ---- users -------------------------------------------------------------------------------------------
async function selectUser(userId) {
  userId = String(userId).trim();
  if (!userId) { showError(new Error("type a user id")); return; }
  $("user-input").value = userId;
  try {
    const u = await api("GET", `v1/users/${encodeURIComponent(userId)}?limit=10`);
    state.userId = userId;
    state.known = u.known;
    $("user-line").textContent = u.known
      ? `User ${userId}: ${u.num_interactions} interactions (model path).`
      : `User ${userId} is unknown to the model (cold-start path).`;
    $("recent").replaceChildren(...u.recent_items.map((it) => el("li", { "data-item-id": it.item_id,
      text: it.title || `item ${it.item_id}` })));
    $("cold").hidden = u.known;
    await refresh();
  } catch (e) {
    showError(e);
  }
}

async function init() {
  try {
    const model = await api("GET", "v1/model");
    state.model = model;
    $("model-line").textContent = `model ${model.model_version} (${model.context_mode}), ${model.num_items - 1} items, ` +
      `index ${model.index.version || "not loaded"} (${model.index.factory || "?"}, ${model.index.num_shards} shard(s))`;
    buildContextControls(model);
    $("k").addEventListener("change", refresh);
    $("user-form").addEventListener("submit", (e) => { e.preventDefault(); selectUser($("user-input").value); });
    const samples = await api("GET", "v1/users?limit=8");
    const chips = samples.user_ids.map((id) => el("button", { type: "button", "data-user-id": id, text: id }));
    const unknown = el("button", { type: "button", class: "unknown", "data-user-id": samples.unknown_user_id,
                                   text: `${samples.unknown_user_id} (unknown)` });
    for (const b of [...chips, unknown]) b.addEventListener("click", () => selectUser(b.dataset.userId));
    $("samples").replaceChildren(...chips, unknown);
    $("user-list").replaceChildren(...samples.user_ids.map((id) => el("option", { value: id })));
    document.body.dataset.ready = "true";
  } catch (e) {
    showError(e);
  }
}

init();

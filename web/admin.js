// The admin page: live stats from the admin socket, the top-flow switch, the
// astrologer table edited in place, and a form to add astrologers.

import { $, Auth, Notices, connectPage, h, show } from "./common.js";

const CHART_WINDOW_MS = 5 * 60_000;
const SAMPLE_EVERY_MS = 2000;
const STATUS_WORDS = { online: "Online", break: "On break", offline: "Offline" };
const SVG_NS = "http://www.w3.org/2000/svg";

const auth = new Auth("admin");
const notices = new Notices($("#notice"), $("#alert"));

const view = {
  rows: new Map(), // id -> {data, el, fields}
  flow: { top_flow: "on", boost: 2 },
  waiting: null,
  samples: [], // {t_ms, waiting}
};

let sampler = null;

const { socket, shell } = connectPage({
  auth,
  notices,
  onFrame: handleFrame,
  role: "admin",
  onLogin: () => {
    loadAll();
    clearInterval(sampler);
    sampler = setInterval(sample, SAMPLE_EVERY_MS);
  },
  onLogout: () => {
    clearInterval(sampler);
  },
});

function handleFrame(frame) {
  switch (frame.type) {
    case "ready":
      // Whatever changed while disconnected, read it afresh.
      if (frame.state && typeof frame.state === "object" && "waiting" in frame.state) applyStats(frame.state);
      loadStats();
      break;
    case "stats":
      applyStats(frame);
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------- loading

async function loadAll() {
  await Promise.all([loadFlow(), loadAstrologers(), loadStats()]);
}

async function loadFlow() {
  try {
    renderFlow(await auth.api("GET", "/admin/flow"));
  } catch (err) {
    notices.error(err);
  }
}

async function loadAstrologers() {
  try {
    const body = await auth.api("GET", "/astrologers");
    for (const astrologer of body.astrologers || []) merge(astrologer);
  } catch (err) {
    notices.error(err);
  }
}

async function loadStats() {
  try {
    applyStats(await auth.api("GET", "/admin/stats"));
  } catch (err) {
    notices.error(err);
  }
}

// ---------------------------------------------------------------- stats

function applyStats(stats) {
  setOutput("#stat-waiting", stats.waiting);
  setOutput("#stat-online", stats.online);
  setOutput("#stat-busy", stats.busy);
  setOutput("#stat-assigned", stats.assigned_today);
  if (typeof stats.waiting === "number") {
    view.waiting = stats.waiting;
    addSample(stats.waiting);
  }
  for (const entry of stats.astrologers || []) merge(entry);
  renderShareChart();
}

function setOutput(selector, value) {
  const text = value === undefined || value === null ? "–" : String(value);
  const el = $(selector);
  if (el.textContent !== text) el.textContent = text;
}

function addSample(waiting) {
  const now = Date.now();
  view.samples.push({ t_ms: now, waiting });
  while (view.samples.length > 2 && view.samples[1].t_ms < now - CHART_WINDOW_MS) view.samples.shift();
  renderWaitingChart();
}

function sample() {
  if (view.waiting !== null) addSample(view.waiting);
}

// ---------------------------------------------------------------- table

function merge(partial) {
  if (!partial || !partial.id) return;
  let row = view.rows.get(partial.id);
  if (!row) {
    row = makeRow(partial.id);
    view.rows.set(partial.id, row);
    $("#astrologers tbody").append(row.el);
    show($("#no-astrologers"), false);
  }
  for (const [key, value] of Object.entries(partial)) {
    if (value !== undefined) row.data[key] = value;
  }
  renderRow(row);
}

function makeRow(id) {
  const fields = {
    name: h("span", { class: "name" }),
    languages: h("small", { class: "hint" }),
    status: h("span", { class: "status" }),
    top: h("input", { type: "checkbox" }),
    weight: h("input", { type: "number", min: "0.1", step: "0.1", inputmode: "decimal", class: "num" }),
    capacity: h("input", { type: "number", min: "1", step: "1", inputmode: "numeric", class: "num" }),
    flow: h("input", { type: "checkbox" }),
    assigned: h("span", { class: "num" }),
    share: h("span", { class: "share-text" }),
    shareBar: h("span", { class: "share-fill" }),
    targetMark: h("span", { class: "target-mark" }),
  };
  const el = h(
    "tr",
    { dataset: { id } },
    h("th", { scope: "row", "data-label": "Name" }, fields.name, " ", fields.languages),
    h("td", { "data-label": "Status" }, fields.status),
    h("td", { "data-label": "Top" }, h("label", { class: "cell-check" }, fields.top, h("span", { class: "visible-label" }, "Top"))),
    h("td", { "data-label": "Weight" }, fields.weight),
    h("td", { "data-label": "Capacity" }, fields.capacity),
    h("td", { "data-label": "Flow" }, h("label", { class: "cell-check" }, fields.flow, h("span", { class: "visible-label" }, "On"))),
    h("td", { "data-label": "Assigned today" }, fields.assigned),
    h(
      "td",
      { "data-label": "Share / target" },
      fields.share,
      h("span", { class: "share-track", "aria-hidden": "true" }, fields.shareBar, fields.targetMark),
    ),
  );
  const row = { id, data: { id }, el, fields };

  fields.top.addEventListener("change", () => patch(row, { is_top: fields.top.checked }, "top setting"));
  fields.flow.addEventListener("change", () => patch(row, { flow_enabled: fields.flow.checked }, "flow setting"));
  fields.weight.addEventListener("change", () => patch(row, { weight: numberOf(fields.weight) }, "weight"));
  fields.capacity.addEventListener("change", () => patch(row, { capacity: numberOf(fields.capacity) }, "capacity"));
  // Escape puts back the saved value.
  for (const input of [fields.weight, fields.capacity]) {
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        renderRow(row, true);
        input.select();
      }
    });
  }
  return row;
}

function numberOf(input) {
  const raw = input.value.trim();
  const value = Number(raw);
  // An empty or malformed entry goes to the server as-is so its error explains it.
  return raw !== "" && Number.isFinite(value) ? value : raw;
}

function renderRow(row, force = false) {
  const d = row.data;
  const f = row.fields;
  const name = d.name || "Unnamed";
  setText(f.name, name);
  setText(f.languages, Array.isArray(d.languages) && d.languages.length ? d.languages.join(", ") : "");
  setText(f.status, STATUS_WORDS[d.status] || d.status || "–");
  f.status.dataset.status = d.status || "";
  f.top.setAttribute("aria-label", `Top astrologer: ${name}`);
  f.flow.setAttribute("aria-label", `Flow on for ${name}`);
  f.weight.setAttribute("aria-label", `Weight for ${name}`);
  f.capacity.setAttribute("aria-label", `Capacity for ${name}`);
  // Weight, capacity and flow come with the astrologer record (create, edit);
  // until one has been seen, the controls say "not known" rather than guess.
  if (typeof d.is_top === "boolean") f.top.checked = d.is_top;
  f.flow.indeterminate = typeof d.flow_enabled !== "boolean";
  f.flow.checked = d.flow_enabled === true;
  // Never overwrite what someone is typing.
  for (const [key, input] of [
    ["weight", f.weight],
    ["capacity", f.capacity],
  ]) {
    if (!force && document.activeElement === input) continue;
    const text = d[key] === undefined || d[key] === null ? "" : String(d[key]);
    if (input.value !== text) input.value = text;
    input.placeholder = d[key] === undefined ? "–" : "";
  }
  setText(f.assigned, d.assigned_today === undefined ? "–" : String(d.assigned_today));
  const share = typeof d.share === "number" ? d.share : null;
  const target = typeof d.target === "number" ? d.target : null;
  setText(f.share, `${share === null ? "–" : percent(share)} / ${target === null ? "–" : percent(target)}`);
  f.shareBar.style.width = `${Math.min(100, (share || 0) * 100)}%`;
  f.targetMark.hidden = target === null;
  f.targetMark.style.left = `${Math.min(100, (target || 0) * 100)}%`;
}

function percent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

async function patch(row, body, what) {
  notices.clearError();
  try {
    const answer = await auth.api("PATCH", `/admin/astrologers/${encodeURIComponent(row.id)}`, body);
    merge(answer.astrologer || answer);
    notices.info(`Saved ${row.data.name}'s ${what}.`);
  } catch (err) {
    notices.error(err);
    renderRow(row, true);
  }
}

// ---------------------------------------------------------------- flow

function renderFlow(flow) {
  if (!flow) return;
  if (flow.top_flow) view.flow.top_flow = flow.top_flow;
  if (typeof flow.boost === "number") view.flow.boost = flow.boost;
  for (const input of document.querySelectorAll("input[name=top_flow]")) {
    input.checked = input.value === view.flow.top_flow;
  }
  const boost = $("#boost");
  if (document.activeElement !== boost) boost.value = String(view.flow.boost);
}

const FLOW_WORDS = {
  off: "Top flow is off: top astrologers get only requests made to them by name.",
  on: "Top flow is on.",
  boost: "Top flow is boosted",
};

async function putFlow(topFlow) {
  notices.clearError();
  const body = { top_flow: topFlow };
  const boostValue = numberOf($("#boost"));
  if (topFlow === "boost") body.boost = boostValue;
  try {
    const answer = await auth.api("PUT", "/admin/flow", body);
    renderFlow(answer && answer.top_flow ? answer : body);
    notices.info(topFlow === "boost" ? `${FLOW_WORDS.boost} ×${view.flow.boost}.` : FLOW_WORDS[topFlow]);
  } catch (err) {
    notices.error(err);
    renderFlow(view.flow);
  }
}

for (const input of document.querySelectorAll("input[name=top_flow]")) {
  input.addEventListener("change", () => {
    if (input.checked) putFlow(input.value);
  });
}
$("#boost").addEventListener("change", () => {
  if (view.flow.top_flow === "boost") putFlow("boost");
});
$("#flow-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const checked = document.querySelector("input[name=top_flow]:checked");
  if (checked) putFlow(checked.value);
});

// ---------------------------------------------------------------- create

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  notices.clearError();
  const form = event.currentTarget;
  const submit = form.querySelector("button[type=submit]");
  const data = new FormData(form);
  const body = {
    name: String(data.get("name") || "").trim(),
    email: String(data.get("email") || "").trim(),
    password: String(data.get("password") || ""),
    is_top: data.get("is_top") === "on",
    weight: numberOf(form.elements.weight),
    capacity: numberOf(form.elements.capacity),
    languages: String(data.get("languages") || "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
  };
  submit.disabled = true;
  try {
    const answer = await auth.api("POST", "/admin/astrologers", body);
    merge(answer.astrologer || answer);
    form.reset();
    notices.info(`Created astrologer ${body.name}.`);
    form.elements.name.focus();
  } catch (err) {
    notices.error(err);
  } finally {
    submit.disabled = false;
  }
});

// ---------------------------------------------------------------- charts

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A step line of waiting users over the last five minutes. */
function renderWaitingChart() {
  const chart = $("#waiting-chart");
  const desc = $("#waiting-chart-summary");
  const [width, height] = [320, 120];
  const left = 28;
  const right = width - 8;
  const top = 10;
  const bottom = height - 20;
  const now = Date.now();
  const from = now - CHART_WINDOW_MS;
  const points = view.samples.filter((s) => s.t_ms >= from - SAMPLE_EVERY_MS * 2);
  const peak = Math.max(4, ...points.map((s) => s.waiting));
  const x = (t) => left + ((Math.max(t, from) - from) / CHART_WINDOW_MS) * (right - left);
  const y = (v) => bottom - (v / peak) * (bottom - top);

  const parts = [
    svg("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axis" }),
    svg("line", { x1: left, y1: top, x2: right, y2: top, class: "grid" }),
    svg("text", { x: left - 4, y: bottom + 4, "text-anchor": "end", class: "tick" }, "0"),
    svg("text", { x: left - 4, y: top + 4, "text-anchor": "end", class: "tick" }, String(peak)),
    svg("text", { x: left, y: height - 4, class: "tick" }, "5 min ago"),
    svg("text", { x: right, y: height - 4, "text-anchor": "end", class: "tick" }, "now"),
  ];
  if (points.length) {
    let d = `M ${x(points[0].t_ms).toFixed(1)} ${y(points[0].waiting).toFixed(1)}`;
    for (let i = 1; i < points.length; i += 1) {
      d += ` H ${x(points[i].t_ms).toFixed(1)} V ${y(points[i].waiting).toFixed(1)}`;
    }
    d += ` H ${x(now).toFixed(1)}`;
    const area = `${d} V ${bottom} H ${x(points[0].t_ms).toFixed(1)} Z`;
    parts.push(svg("path", { d: area, class: "area" }), svg("path", { d, class: "line" }));
    const latest = points[points.length - 1].waiting;
    const most = Math.max(...points.map((s) => s.waiting));
    desc.textContent = `Now ${latest} waiting; at most ${most} in the last 5 minutes.`;
  }
  chart.replaceChildren(desc, ...parts);
}

/** One bar per astrologer: today's share, with a mark at its target. */
function renderShareChart() {
  const chart = $("#share-chart");
  const desc = $("#share-chart-summary");
  const rows = [...view.rows.values()].map((r) => r.data);
  const rowHeight = 22;
  const height = Math.max(40, 8 + rows.length * rowHeight);
  chart.setAttribute("viewBox", `0 0 320 ${height}`);
  const labelWidth = 92;
  const barLeft = labelWidth + 4;
  const barRight = 270;
  const barWidth = barRight - barLeft;
  const parts = [];
  rows.forEach((d, i) => {
    const yTop = 6 + i * rowHeight;
    const share = typeof d.share === "number" ? Math.min(1, Math.max(0, d.share)) : 0;
    const name = (d.name || "?").length > 14 ? `${d.name.slice(0, 13)}…` : d.name || "?";
    parts.push(
      svg("text", { x: labelWidth, y: yTop + 12, "text-anchor": "end", class: "tick" }, name),
      svg("rect", { x: barLeft, y: yTop + 2, width: barWidth, height: 12, class: "track", rx: 2 }),
      svg("rect", { x: barLeft, y: yTop + 2, width: (share * barWidth).toFixed(1), height: 12, class: "bar", rx: 2 }),
      svg("text", { x: barRight + 6, y: yTop + 12, class: "tick" }, typeof d.share === "number" ? percent(d.share) : "–"),
    );
    if (typeof d.target === "number") {
      const tx = barLeft + Math.min(1, Math.max(0, d.target)) * barWidth;
      parts.push(svg("line", { x1: tx, y1: yTop, x2: tx, y2: yTop + 16, class: "target" }));
    }
  });
  desc.textContent = rows.length
    ? rows
        .map(
          (d) =>
            `${d.name}: ${typeof d.share === "number" ? percent(d.share) : "no"} share` +
            (typeof d.target === "number" ? `, target ${percent(d.target)}` : ""),
        )
        .join("; ")
    : "No astrologers yet.";
  chart.replaceChildren(desc, ...parts);
}

renderWaitingChart();
renderShareChart();

shell.start();

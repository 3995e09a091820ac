// The user page: log in or register, choose an astrologer, wait in line,
// talk, end. The view is rebuilt from the `ready` frame after every reconnect.

import {
  $,
  Auth,
  Notices,
  cancelReasonWords,
  connectPage,
  formatEta,
  h,
  show,
} from "./common.js";

const ASTROLOGERS_EVERY_MS = 4000;
const BASE_TITLE = "astroq · talk to an astrologer";

const auth = new Auth("user");
const notices = new Notices($("#notice"), $("#alert"));

/** What the page shows; `request` and `session` mirror the server's user state. */
const view = {
  request: null, // {request_id, kind, astrologer_id, position, eta_seconds}
  session: null, // {session_id, request_id, astrologer: {id, name}, kind}
  astrologers: new Map(), // id -> {id, name, is_top, status, languages, waiting}
  lastKind: "chat",
};

let pollTimer = null;
let listFailing = false;

const { socket, shell } = connectPage({
  auth,
  notices,
  onFrame: handleFrame,
  role: "user",
  onLogin: () => {
    refreshAstrologers();
    clearInterval(pollTimer);
    pollTimer = setInterval(refreshAstrologers, ASTROLOGERS_EVERY_MS);
  },
  onLogout: () => {
    clearInterval(pollTimer);
    view.request = null;
    view.session = null;
    render();
  },
});

// ---------------------------------------------------------------- frames

function handleFrame(frame) {
  switch (frame.type) {
    case "ready":
      restore(frame.state || {});
      break;
    case "queued":
    case "position":
      onPosition(frame);
      break;
    case "assigned":
      onAssigned(frame);
      break;
    case "cancelled":
      if (!view.request || view.request.request_id === frame.request_id) {
        view.request = null;
        notices.info(cancelReasonWords(frame.reason));
        render();
      }
      break;
    case "session_ended":
      if (!view.session || view.session.session_id === frame.session_id) {
        const name = view.session ? view.session.astrologer.name : "The astrologer";
        view.session = null;
        notices.info(endedWords(frame.ended_by, name));
        render();
      }
      break;
    default:
      break;
  }
}

function restore(state) {
  const hadSomething = view.request || view.session;
  const request = state.request || null;
  const session = state.session || null;
  if (request) {
    view.request = { ...request };
    view.lastKind = request.kind || view.lastKind;
  } else {
    view.request = null;
  }
  if (session) {
    const kind = view.session && view.session.session_id === session.session_id ? view.session.kind : null;
    view.session = { ...session, kind };
  } else {
    view.session = null;
  }
  if (hadSomething && !view.request && !view.session) {
    notices.info("Your earlier request or session is no longer open.");
  }
  render();
}

function onPosition(frame) {
  if (view.session) return;
  if (!view.request || view.request.request_id !== frame.request_id) {
    view.request = {
      request_id: frame.request_id,
      kind: view.lastKind,
      astrologer_id: view.pendingAstrologer ?? null,
      position: null,
      eta_seconds: null,
    };
  }
  view.request.position = frame.position;
  view.request.eta_seconds = frame.eta_seconds;
  render();
}

function onAssigned(frame) {
  const kind = view.request ? view.request.kind : view.lastKind;
  view.request = null;
  view.session = {
    session_id: frame.session_id,
    request_id: frame.request_id,
    astrologer: frame.astrologer || { id: null, name: "your astrologer" },
    kind,
  };
  notices.info(`${view.session.astrologer.name} accepted. Your ${kind || "consultation"} has started.`);
  render();
}

function endedWords(endedBy, name) {
  if (endedBy === "user") return "You ended the session.";
  if (endedBy === "astrologer") return `${name} ended the session.`;
  return "The session was ended by the service.";
}

// ---------------------------------------------------------------- rendering

const views = {
  request: $("#request-view"),
  waiting: $("#waiting-view"),
  session: $("#session-view"),
};

function render() {
  const which = view.session ? "session" : view.request ? "waiting" : "request";
  const before = Object.keys(views).find((key) => !views[key].hidden);
  for (const [key, el] of Object.entries(views)) show(el, key === which);

  if (which === "waiting") renderWaiting();
  if (which === "session") {
    $("#session-astrologer").textContent = view.session.astrologer.name;
    $("#session-kind").textContent = view.session.kind || "consultation";
  }
  document.title =
    which === "waiting" && view.request.position
      ? `#${view.request.position} in line · astroq`
      : which === "session"
        ? `In session · astroq`
        : BASE_TITLE;

  // Keep keyboard users oriented when their part of the page went away.
  if (before !== which) {
    const active = document.activeElement;
    if (!active || active === document.body || active.closest("[hidden]")) {
      const heading = views[which].querySelector("h1");
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

function renderWaiting() {
  const request = view.request;
  const who = request.astrologer_id
    ? (view.astrologers.get(request.astrologer_id) || { name: "your chosen astrologer" }).name
    : "the first free astrologer";
  $("#waiting-what").textContent = `${request.kind === "call" ? "Call" : "Chat"} with ${who}.`;
  const position = $("#position");
  const positionText = request.position ? String(request.position) : "–";
  if (position.textContent !== positionText) position.textContent = positionText;
  const eta = formatEta(request.eta_seconds);
  const etaText =
    request.position === null || request.position === undefined
      ? "–"
      : eta === null
        ? "Waiting for an astrologer to come online"
        : eta;
  const etaEl = $("#eta");
  if (etaEl.textContent !== etaText) etaEl.textContent = etaText;
  etaEl.classList.toggle("muted", eta === null);
}

// ---------------------------------------------------------------- astrologers

const STATUS_WORDS = { online: "Online", break: "On a break", offline: "Offline" };

async function refreshAstrologers() {
  if (!auth.loggedIn) return;
  let body;
  try {
    body = await auth.api("GET", "/astrologers");
  } catch (err) {
    // Say it once per outage, not every few seconds.
    if (!listFailing && err.status !== 401) notices.error(err);
    listFailing = true;
    return;
  }
  if (listFailing) notices.clearError();
  listFailing = false;
  renderAstrologers(body.astrologers || []);
}

function renderAstrologers(list) {
  const container = $("#astrologer-list");
  const seen = new Set();
  for (const astrologer of list) {
    seen.add(astrologer.id);
    view.astrologers.set(astrologer.id, astrologer);
    let row = container.querySelector(`[data-id="${CSS.escape(astrologer.id)}"]`);
    if (!row) {
      row = astrologerRow(astrologer.id);
      container.append(row);
    }
    updateRow(row, astrologer);
  }
  for (const row of [...container.children]) {
    if (!seen.has(row.dataset.id)) {
      const input = row.querySelector("input");
      if (input.checked) $("#astro-any").checked = true;
      view.astrologers.delete(row.dataset.id);
      row.remove();
    }
  }
  sortRows(container);
  show($("#astrologer-empty"), list.length === 0);
  if (view.request) renderWaiting();
}

const STATUS_RANK = { online: 0, break: 1, offline: 2 };

// Online first, then on break, then offline; moves rows only when the order
// changed, and gives focus back to a radio that moved.
function sortRows(container) {
  const rows = [...container.children];
  const rank = (row) => {
    const a = view.astrologers.get(row.dataset.id) || {};
    return [STATUS_RANK[a.status] ?? 3, a.is_top ? 0 : 1, (a.name || "").toLowerCase()];
  };
  const sorted = [...rows].sort((x, y) => {
    const [a, b] = [rank(x), rank(y)];
    return a[0] - b[0] || a[1] - b[1] || a[2].localeCompare(b[2]);
  });
  if (sorted.every((row, i) => row === rows[i])) return;
  const focused = document.activeElement;
  container.append(...sorted);
  if (focused && container.contains(focused) && document.activeElement !== focused) focused.focus();
}

function astrologerRow(id) {
  const base = `astro-${id}`;
  return h(
    "div",
    { class: "choice", dataset: { id } },
    h("input", {
      type: "radio",
      name: "astrologer",
      id: base,
      value: id,
      "aria-labelledby": `${base}-name ${base}-top`,
      "aria-describedby": `${base}-desc`,
    }),
    h(
      "label",
      { for: base },
      h("span", { class: "name", id: `${base}-name` }),
      " ",
      h("span", { class: "badge top", id: `${base}-top`, hidden: true }, "Top"),
      h(
        "span",
        { class: "details", id: `${base}-desc` },
        h("span", { class: "status" }),
        h("span", { class: "sep", "aria-hidden": "true" }, " · "),
        h("span", { class: "waiting" }),
      ),
    ),
  );
}

function updateRow(row, astrologer) {
  const base = `astro-${astrologer.id}`;
  const input = row.querySelector("input");
  setText(row.querySelector(`#${CSS.escape(base)}-name`), astrologer.name);
  const badge = row.querySelector(".badge.top");
  badge.hidden = !astrologer.is_top;
  input.setAttribute("aria-labelledby", astrologer.is_top ? `${base}-name ${base}-top` : `${base}-name`);
  const status = row.querySelector(".status");
  setText(status, STATUS_WORDS[astrologer.status] || astrologer.status);
  status.dataset.status = astrologer.status;
  const waiting = Number(astrologer.waiting) || 0;
  setText(row.querySelector(".waiting"), waiting === 0 ? "no one waiting" : `${waiting} waiting`);
  const offline = astrologer.status === "offline";
  if (offline && input.checked) {
    $("#astro-any").checked = true;
    notices.info(`${astrologer.name} went offline. Choose someone else or any astrologer.`);
  }
  input.disabled = offline;
  row.classList.toggle("off", offline);
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// ---------------------------------------------------------------- actions

$("#request-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  notices.clearError();
  const form = event.currentTarget;
  const kind = form.elements.kind.value || "chat";
  const astrologerId = form.elements.astrologer.value || null;
  const button = $("#request-submit");
  button.disabled = true;
  view.lastKind = kind;
  view.pendingAstrologer = astrologerId;
  try {
    const ack = await socket.send({ type: "request", kind, astrologer_id: astrologerId });
    if (!view.request && !view.session) {
      view.request = {
        request_id: ack.request_id,
        kind,
        astrologer_id: astrologerId,
        position: null,
        eta_seconds: null,
      };
    } else if (view.request) {
      view.request.kind = kind;
      view.request.astrologer_id = astrologerId;
    }
    notices.info("You joined the line.");
    render();
  } catch (err) {
    notices.error(err);
    // The server holds an open request this page did not know of: resync.
    if (err.code === "already_open") socket.reconnectNow();
    if (err.code === "astrologer_offline" || err.code === "not_found") refreshAstrologers();
  } finally {
    button.disabled = false;
  }
});

$("#cancel-request").addEventListener("click", async (event) => {
  if (!view.request) return;
  notices.clearError();
  const button = event.currentTarget;
  button.disabled = true;
  try {
    await socket.send({ type: "cancel", request_id: view.request.request_id });
  } catch (err) {
    notices.error(err);
    if (err.code === "not_found") socket.reconnectNow();
  } finally {
    button.disabled = false;
  }
});

$("#end-session").addEventListener("click", async (event) => {
  if (!view.session) return;
  notices.clearError();
  const button = event.currentTarget;
  button.disabled = true;
  try {
    await socket.send({ type: "end", session_id: view.session.session_id });
  } catch (err) {
    if (err.code === "already_ended" || err.code === "not_found") {
      view.session = null;
      notices.info("That session has already ended.");
      render();
    } else {
      notices.error(err);
    }
  } finally {
    button.disabled = false;
  }
});

// Log in / create account share one form; the mode decides the fields.
const loginForm = $("#login-form");
$("#auth-switch").addEventListener("click", () => {
  const registering = loginForm.dataset.mode !== "register";
  loginForm.dataset.mode = registering ? "register" : "login";
  $("#auth-heading").textContent = registering ? "Create an account" : "Log in";
  $("#auth-submit").textContent = registering ? "Create account" : "Log in";
  $("#auth-switch").textContent = registering ? "Have an account? Log in" : "New here? Create an account";
  const name = $("#login-name");
  show($("#name-field"), registering);
  name.disabled = !registering;
  name.required = registering;
  const password = $("#login-password");
  password.autocomplete = registering ? "new-password" : "current-password";
  if (registering) {
    password.minLength = 8;
    password.setAttribute("aria-describedby", "password-hint");
  } else {
    password.removeAttribute("minlength");
    password.removeAttribute("aria-describedby");
  }
  show($("#password-hint"), registering);
  notices.clearError();
  (registering ? name : $("#login-email")).focus();
});

render();
shell.start();

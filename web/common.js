// Shared by the three pages: token storage, HTTP calls, the reconnecting
// socket with `ref` correlation, notices in words, and small DOM helpers.
// Frame and error names are the SPEC's strings (§3, §4).

const API = "/api/v1";
const PING_EVERY_MS = 20_000;
// No frame at all for this long after a ping means a half-open connection.
const SILENCE_LIMIT_MS = 45_000;
const PROBE_WAIT_MS = 5000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  BAD_TOKEN: 4401,
  ACCOUNT_GONE: 4403,
  AUTH_TIMEOUT: 4408,
});

/** An error with the server's stable code; `status` is 0 when the network failed. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- words

const ERROR_WORDS = {
  email_taken: "That email is already registered.",
  invalid_credentials: "Wrong email or password.",
  invalid_token: "Your login has expired. Please log in again.",
  unauthorized: "Please log in first.",
  forbidden: "Your account is not allowed to do that.",
  not_found: "That no longer exists.",
  too_many_attempts: "Too many failed logins. Wait a few minutes and try again.",
  rate_limited: "Too many actions at once. Wait a moment and try again.",
  payload_too_large: "That is too much text to send.",
  already_open: "You already have an open request or session.",
  astrologer_offline: "That astrologer is offline right now. Choose another one or any astrologer.",
  offer_expired: "That offer is no longer open.",
  already_ended: "That session has already ended.",
  unavailable: "The service is briefly unavailable. Try again in a moment.",
  bad_json: "The page sent something the server could not read. Reload the page.",
  unknown_type: "The page sent something the server does not know. Reload the page.",
  network: "Cannot reach the server. Check your connection and try again.",
  disconnected: "Not connected right now. Wait for the connection to come back and try again.",
  internal: "Something went wrong on the server. Try again.",
};

// For these the server's own message says which field is wrong.
const SERVER_MESSAGE_FIRST = new Set(["invalid_input"]);

/** A sentence for an error code, preferring the server's text where it is more specific. */
export function describeError(code, message) {
  if (SERVER_MESSAGE_FIRST.has(code) && message) return capitalise(message);
  if (ERROR_WORDS[code]) return ERROR_WORDS[code];
  if (message) return capitalise(message);
  return `Something went wrong (${code || "unknown error"}).`;
}

function capitalise(text) {
  const s = String(text).trim();
  const withStop = /[.!?]$/.test(s) ? s : `${s}.`;
  return withStop.charAt(0).toUpperCase() + withStop.slice(1);
}

export const CANCEL_WORDS = {
  user: "You cancelled your request.",
  timeout: "Your request waited too long without an answer, so it was closed.",
  declined: "The astrologer declined your request.",
  abandoned: "Your request was closed because you were away for too long.",
  astrologer_offline: "The astrologer went offline, so your request was closed.",
};

export function cancelReasonWords(reason) {
  return CANCEL_WORDS[reason] || `Your request was closed (${reason || "no reason given"}).`;
}

/** "about 3 min", "under a minute", or null when there is no estimate. */
export function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return null;
  const s = Math.max(0, Number(seconds));
  if (s < 60) return "under a minute";
  const minutes = Math.round(s / 60);
  if (minutes < 60) return `about ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `about ${hours} h ${rest} min` : `about ${hours} h`;
}

// ---------------------------------------------------------------- DOM

/** Builds an element: h("p", {class: "x", onclick: fn}, "text", child). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function show(el, visible) {
  el.hidden = !visible;
}

const NOTICES_KEPT = 3;

/**
 * Visible messages. News goes to a polite log that keeps the last few lines
 * (events often come in pairs: an offer expires, then the status changes);
 * errors go to the assertive region.
 */
export class Notices {
  constructor(logEl, alertEl) {
    this.logEl = logEl;
    this.alertEl = alertEl;
  }

  info(text) {
    if (!text) return;
    this.logEl.append(h("p", {}, text));
    while (this.logEl.children.length > NOTICES_KEPT) this.logEl.firstElementChild.remove();
  }

  error(errorOrCode, message) {
    let text;
    if (errorOrCode instanceof ApiError) text = describeError(errorOrCode.code, errorOrCode.message);
    else if (errorOrCode instanceof Error) text = "Something went wrong on this page. Reload it and try again.";
    else text = describeError(errorOrCode, message);
    this.errorText(text);
  }

  errorText(text) {
    this.alertEl.replaceChildren(h("span", {}, text));
    this.alertEl.hidden = false;
  }

  clearError() {
    this.alertEl.replaceChildren();
    this.alertEl.hidden = true;
  }

  clear() {
    this.logEl.replaceChildren();
    this.clearError();
  }
}

// ---------------------------------------------------------------- HTTP

async function call(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "network", err && err.message);
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(response.status, err.code || `http_${response.status}`, err.message || response.statusText);
  }
  return data;
}

// ---------------------------------------------------------------- auth

/**
 * Tokens for one page, kept in localStorage under its own key so that the user
 * page, the console and the admin page can be logged in side by side.
 * Refreshes the access token shortly before it expires and on a 401.
 */
export class Auth extends EventTarget {
  constructor(scope) {
    super();
    this.key = `astroq.${scope}.auth`;
    this.data = this._load();
    this._refreshing = null;
    this._timer = null;
    window.addEventListener("storage", (event) => {
      if (event.key !== this.key) return;
      this.data = this._load();
      this._schedule();
      this.dispatchEvent(new Event("change"));
    });
    this._schedule();
  }

  get loggedIn() {
    return Boolean(this.data && this.data.refresh_token);
  }

  get user() {
    return this.data ? this.data.user : null;
  }

  _load() {
    try {
      const raw = localStorage.getItem(this.key);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  _save(tokens) {
    const ttlMs = Math.max(1, Number(tokens.expires_in) || 900) * 1000;
    this.data = {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      user: tokens.user,
      ttl_ms: ttlMs,
      expires_at: Date.now() + ttlMs,
    };
    try {
      localStorage.setItem(this.key, JSON.stringify(this.data));
    } catch {
      // Private mode without storage: tokens live for this page only.
    }
    this._schedule();
    this.dispatchEvent(new Event("change"));
  }

  clear() {
    this.data = null;
    clearTimeout(this._timer);
    try {
      localStorage.removeItem(this.key);
    } catch {
      // nothing stored
    }
    this.dispatchEvent(new Event("change"));
  }

  async login(email, password) {
    this._save(await call("POST", `${API}/auth/login`, { email, password }));
    return this.user;
  }

  async register(email, password, name) {
    await call("POST", `${API}/auth/register`, { email, password, name });
    return this.login(email, password);
  }

  // Refresh well before expiry: a quarter of the lifetime, at most a minute early.
  _leadMs() {
    const ttl = (this.data && this.data.ttl_ms) || 900_000;
    return Math.min(60_000, ttl / 4);
  }

  _schedule() {
    clearTimeout(this._timer);
    if (!this.loggedIn) return;
    const delay = Math.max(1000, this.data.expires_at - Date.now() - this._leadMs());
    this._timer = setTimeout(() => {
      this.refresh().catch(() => {});
    }, Math.min(delay, 2 ** 31 - 1));
  }

  /** Swaps the refresh token for new tokens; one refresh at a time per page. */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._doRefresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _doRefresh() {
    const before = this.data;
    // Another tab may have refreshed already (and rotated the refresh token).
    const stored = this._load();
    if (stored && before && stored.access_token !== before.access_token && stored.expires_at - Date.now() > this._leadMs()) {
      this.data = stored;
      this._schedule();
      return stored.access_token;
    }
    if (!this.loggedIn) throw new ApiError(401, "invalid_token", "");
    try {
      this._save(await call("POST", `${API}/auth/refresh`, { refresh_token: this.data.refresh_token }));
      return this.data.access_token;
    } catch (err) {
      if (err.status === 401) {
        const latest = this._load();
        if (latest && latest.refresh_token !== (before && before.refresh_token)) {
          this.data = latest;
          this._schedule();
          return latest.access_token;
        }
        this.clear();
      }
      throw err;
    }
  }

  /** An access token that is not about to expire. */
  async token() {
    if (!this.loggedIn) throw new ApiError(401, "unauthorized", "");
    if (this.data.expires_at - Date.now() < 5000) return this.refresh();
    return this.data.access_token;
  }

  /** An authenticated API call; one refresh and retry on a 401. */
  async api(method, path, body) {
    const url = `${API}${path}`;
    try {
      return await call(method, url, body, await this.token());
    } catch (err) {
      if (err.status !== 401 || !this.loggedIn) throw err;
      const token = await this.refresh();
      return call(method, url, body, token);
    }
  }
}

// ---------------------------------------------------------------- socket

/** Connection states shown to people: connecting, ready, waiting (to retry), closed. */
export const SocketState = Object.freeze({
  CONNECTING: "connecting",
  READY: "ready",
  WAITING: "waiting",
  CLOSED: "closed",
});

/**
 * The authenticated, reconnecting socket (SPEC §4).
 *
 * Reconnects with exponential backoff and jitter; every `ready` frame goes to
 * onFrame so the page rebuilds its view from `state`. send() adds a `ref` and
 * resolves with the matching `ack`, or rejects with the matching `error`.
 */
export class Socket {
  constructor({ auth, onFrame, onState, onError, onAuthLost }) {
    this.auth = auth;
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.onError = onError || (() => {});
    this.onAuthLost = onAuthLost || (() => {});
    this.ws = null;
    this.ready = false;
    this.stopped = true;
    this.attempts = 0;
    this.badTokenStreak = 0;
    this.pending = new Map();
    this.nextRef = 1;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    // Back online: a socket that survived a network change may be dead
    // without knowing it, so probe it and reconnect unless it answers soon.
    this._onOnline = () => {
      if (this.stopped) return;
      if (!this.ws || !this.ready) {
        this.reconnectNow();
        return;
      }
      const ws = this.ws;
      const probeAt = Date.now();
      ws.send(JSON.stringify({ type: "ping" }));
      setTimeout(() => {
        if (this.ws === ws && this.lastFrameAt < probeAt) this.reconnectNow();
      }, PROBE_WAIT_MS);
    };
    window.addEventListener("online", this._onOnline);
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempts = 0;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this._teardown(CloseCode.NORMAL, "bye");
    this._rejectPending();
    this.onState(SocketState.CLOSED);
  }

  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.attempts = 0;
    this._teardown(CloseCode.NORMAL, "reconnect");
    this._connect();
  }

  /** Sends a state-changing frame; resolves with its ack frame. */
  send(frame) {
    if (!this.ready || !this.ws) {
      return Promise.reject(new ApiError(0, "disconnected", ""));
    }
    const ref = `r${this.nextRef++}`;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  _connect() {
    if (this.stopped) return;
    this.ready = false;
    this.onState(SocketState.CONNECTING);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.onopen = async () => {
      let token;
      try {
        token = await this.auth.token();
      } catch (err) {
        if (err.status === 401) {
          this.stop();
          this.onAuthLost(err);
        } else {
          ws.close();
        }
        return;
      }
      if (this.ws === ws && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "auth", token }));
      }
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this._dispatch(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this._afterClose(event.code);
    };
  }

  _dispatch(frame) {
    switch (frame.type) {
      case "ready":
        this.ready = true;
        this.attempts = 0;
        this.badTokenStreak = 0;
        this._startPing();
        this.onState(SocketState.READY);
        this.onFrame(frame);
        return;
      case "pong":
        return;
      case "ack":
      case "error": {
        const waiter = frame.ref !== undefined ? this.pending.get(frame.ref) : undefined;
        if (waiter) {
          this.pending.delete(frame.ref);
          if (frame.type === "ack") waiter.resolve(frame);
          else waiter.reject(new ApiError(0, frame.code, frame.message));
        } else if (frame.type === "error") {
          this.onError(new ApiError(0, frame.code, frame.message));
        }
        return;
      }
      default:
        this.onFrame(frame);
    }
  }

  _startPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
        // Half-open: the close handshake would never finish, so do not wait for it.
        this._teardown(CloseCode.NORMAL, "silent");
        this._afterClose(1006);
        return;
      }
      this.ws.send(JSON.stringify({ type: "ping" }));
    }, PING_EVERY_MS);
  }

  _teardown(code, reason) {
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        try {
          ws.close(code, reason);
        } catch {
          // already closing
        }
      }
    }
  }

  _rejectPending() {
    for (const waiter of this.pending.values()) waiter.reject(new ApiError(0, "disconnected", ""));
    this.pending.clear();
  }

  async _afterClose(code) {
    this._teardown(CloseCode.NORMAL, "");
    this._rejectPending();
    if (this.stopped) return;
    if (code === CloseCode.ACCOUNT_GONE) {
      this.stop();
      this.onAuthLost(new ApiError(0, "forbidden", "This account no longer exists."));
      return;
    }
    if (code === CloseCode.BAD_TOKEN) {
      this.badTokenStreak += 1;
      try {
        if (this.badTokenStreak > 2) throw new ApiError(401, "invalid_token", "");
        await this.auth.refresh();
      } catch (err) {
        if (err.status === 401) {
          this.stop();
          this.onAuthLost(err);
          return;
        }
      }
    }
    this._retryLater();
  }

  _retryLater() {
    // Exponential backoff with "equal jitter": half fixed, half random.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempts);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempts += 1;
    this.onState(SocketState.WAITING, delay);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }
}

/** Words for the connection indicator. */
export function connectionWords(state, delayMs) {
  switch (state) {
    case SocketState.READY:
      return "Connected";
    case SocketState.CONNECTING:
      return "Connecting…";
    case SocketState.WAITING:
      return `Connection lost; retrying in ${Math.max(1, Math.round(delayMs / 1000))} s`;
    default:
      return "Not connected";
  }
}

// ---------------------------------------------------------------- page shell

/**
 * Wires the header (who is logged in, connection state, log out) and the
 * login form shared by every page. `onLogin` runs after a successful login and,
 * from start(), when tokens are already stored; `onLogout` when they are gone.
 */
const ROLE_PAGES = {
  user: "This page is for people looking for a consultation. Astrologers use /console, admins /admin.",
  astrologer: "This console is for astrologers. Log in with an astrologer account.",
  admin: "This page is for admins. Log in with an admin account.",
};

export function setupShell({ auth, notices, role, onLogin, onLogout }) {
  const loginForm = $("#login-form");
  const authView = $("#auth-view");
  const appView = $("#app-view");
  const who = $("#who");
  const logout = $("#logout");
  const conn = $("#conn");

  function enter() {
    const user = auth.user;
    if (role && user && user.role !== role) {
      auth.clear();
      notices.errorText(ROLE_PAGES[role]);
      leave();
      return;
    }
    show(authView, false);
    show(appView, true);
    who.textContent = user ? user.name : "";
    who.title = user ? user.email : "";
    show(who, true);
    show(logout, true);
    show(conn, true);
    onLogin(user);
  }

  function leave() {
    show(authView, true);
    show(appView, false);
    show(who, false);
    show(logout, false);
    show(conn, false);
    onLogout();
  }

  loginForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    notices.clearError();
    const data = new FormData(loginForm);
    const submit = loginForm.querySelector("button[type=submit]");
    const registering = loginForm.dataset.mode === "register";
    submit.disabled = true;
    try {
      const email = String(data.get("email") || "").trim();
      const password = String(data.get("password") || "");
      if (registering) {
        await auth.register(email, password, String(data.get("name") || "").trim());
      } else {
        await auth.login(email, password);
      }
      loginForm.reset();
      enter();
      if (auth.loggedIn) notices.info(registering ? "Account created. You are logged in." : "You are logged in.");
    } catch (err) {
      notices.error(err);
    } finally {
      submit.disabled = false;
    }
  });

  logout.addEventListener("click", () => {
    leave();
    auth.clear();
    notices.clear();
    notices.info("You are logged out.");
    $("#login-form input[name=email]").focus();
  });

  // Logged out elsewhere (another tab) or the login could not be renewed.
  auth.addEventListener("change", () => {
    if (!auth.loggedIn && !appView.hidden) {
      leave();
      notices.info("You have been logged out. Log in again to continue.");
    }
  });

  return {
    /** Enters the app when tokens are stored, else shows the login form. */
    start() {
      if (auth.loggedIn) enter();
      else leave();
    },
    setConnection(state, delayMs) {
      conn.textContent = connectionWords(state, delayMs);
      conn.dataset.state = state;
    },
    authLost(err) {
      leave();
      auth.clear();
      notices.error(err && err.code === "forbidden" ? err : new ApiError(401, "invalid_token", ""));
    },
  };
}

/**
 * A page's shell and its socket, wired together: the socket runs while someone
 * of `role` is logged in, its state shows in the header, and a socket whose
 * login is refused logs the page out. `onLogin` and `onLogout` add the page's
 * own work.
 */
export function connectPage({ auth, notices, role, onFrame, onLogin = () => {}, onLogout = () => {} }) {
  const socket = new Socket({
    auth,
    onFrame,
    onState: (state, delay) => shell.setConnection(state, delay),
    onError: (err) => notices.error(err),
    onAuthLost: (err) => shell.authLost(err),
  });
  const shell = setupShell({
    auth,
    notices,
    role,
    onLogin: (user) => {
      socket.start();
      onLogin(user);
    },
    onLogout: () => {
      socket.stop();
      onLogout();
    },
  });
  return { socket, shell };
}

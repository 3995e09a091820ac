// The astrologer console: status, incoming offers with a countdown, current
// sessions, and how many wait. Rebuilt from the `ready` frame on reconnect.

import { $, Auth, Notices, connectPage, h, show } from "./common.js";

const BASE_TITLE = "astroq · astrologer console";
const STATUS_WORDS = { online: "Online", break: "On break", offline: "Offline" };
const KIND_WORDS = { chat: "Chat", call: "Call" };

const auth = new Auth("console");
const notices = new Notices($("#notice"), $("#alert"));

const view = {
  status: "offline",
  offers: new Map(), // offer_id -> {offer, deadline_ms, el}
  sessions: new Map(), // session_id -> {session, el}
  kindByRequest: new Map(), // request_id -> kind, to name the session after accept
};

let ticker = null;

const { socket, shell } = connectPage({
  auth,
  notices,
  onFrame: handleFrame,
  role: "astrologer",
  onLogout: () => {
    clearOffers();
    clearSessions();
  },
});

// ---------------------------------------------------------------- frames

function handleFrame(frame) {
  switch (frame.type) {
    case "ready":
      restore(frame.state || {});
      break;
    case "offer":
      addOffer(frame, true);
      break;
    case "offer_expired": {
      const entry = view.offers.get(frame.offer_id);
      if (entry) notices.info(`The ${kindWord(entry.offer.kind)} request from ${entry.offer.user.name} expired.`);
      removeOffer(frame.offer_id);
      break;
    }
    case "offer_withdrawn": {
      const entry = view.offers.get(frame.offer_id);
      if (entry) {
        const name = entry.offer.user.name;
        notices.info(
          frame.reason === "abandoned"
            ? `${name} left before you answered; the offer was withdrawn.`
            : `${name} cancelled the request; the offer was withdrawn.`,
        );
      }
      removeOffer(frame.offer_id);
      break;
    }
    case "assigned":
      for (const [offerId, entry] of view.offers) {
        if (entry.offer.request_id === frame.request_id) removeOffer(offerId);
      }
      addSession({ session_id: frame.session_id, request_id: frame.request_id, user: frame.user });
      notices.info(`You are now in a ${kindWord(view.kindByRequest.get(frame.request_id))} with ${frame.user.name}.`);
      break;
    case "session_ended": {
      const entry = view.sessions.get(frame.session_id);
      if (entry) {
        const name = entry.session.user.name;
        notices.info(frame.ended_by === "astrologer" ? `You ended the session with ${name}.` : frame.ended_by === "user" ? `${name} ended the session.` : `The session with ${name} was ended by the service.`);
      }
      removeSession(frame.session_id);
      break;
    }
    case "waiting":
      setWaiting(frame);
      break;
    case "status":
      setStatus(frame.status, frame.reason);
      break;
    default:
      break;
  }
}

function restore(state) {
  setStatus(state.status || "offline");
  clearOffers();
  for (const offer of state.offers || []) addOffer(offer, false);
  clearSessions();
  for (const session of state.sessions || []) addSession(session);
  setWaiting(state.waiting || { direct: 0, general: 0 });
}

function kindWord(kind) {
  return kind === "call" ? "call" : kind === "chat" ? "chat" : "consultation";
}

// ---------------------------------------------------------------- status

function setStatus(status, reason) {
  view.status = status;
  for (const input of document.querySelectorAll("input[name=status]")) {
    input.checked = input.value === status;
  }
  showConfirmedStatus(status);
  const note = $("#status-note");
  if (reason === "missed_offers") {
    note.textContent =
      "You missed several offers in a row, so you were put on break. Choose Online when you are ready for more.";
    show(note, true);
    notices.info("You were put on break after missed offers.");
  } else if (reason) {
    note.textContent = `Your status changed to ${STATUS_WORDS[status] || status}.`;
    show(note, true);
  } else if (status === "online") {
    show(note, false);
  }
}

for (const input of document.querySelectorAll("input[name=status]")) {
  input.addEventListener("change", async () => {
    if (!input.checked) return;
    notices.clearError();
    const wanted = input.value;
    const previous = view.status;
    try {
      await socket.send({ type: "status", status: wanted });
      view.status = wanted;
      showConfirmedStatus(wanted);
      if (wanted === "online") show($("#status-note"), false);
      notices.info(`You are ${STATUS_WORDS[wanted].toLowerCase()}.`);
    } catch (err) {
      notices.error(err);
      setStatus(previous);
    }
  });
}

// The radios show what was asked for; this line shows what the server holds.
function showConfirmedStatus(status) {
  const el = $("#status-now-value");
  el.textContent = STATUS_WORDS[status] || status;
  el.dataset.status = status;
}

function setWaiting(frame) {
  $("#wait-direct").textContent = String(frame.direct ?? 0);
  $("#wait-general").textContent = String(frame.general ?? 0);
}

// ---------------------------------------------------------------- offers

function addOffer(offer, fresh) {
  if (view.offers.has(offer.offer_id)) removeOffer(offer.offer_id);
  const expiresS = Math.max(0, Number(offer.expires_in) || 0);
  const deadline = Date.now() + expiresS * 1000;
  view.kindByRequest.set(offer.request_id, offer.kind);
  const titleId = `offer-${offer.offer_id}`;
  const who = offer.user ? offer.user.name : "someone";
  const kind = KIND_WORDS[offer.kind] || "Consultation";
  const countdown = h("span", { class: "countdown" });
  const bar = h("progress", { max: String(Math.max(1, expiresS)), value: String(expiresS), "aria-label": "Time left to answer" });
  const accept = h("button", { type: "button", class: "primary", "aria-label": `Accept ${kind.toLowerCase()} from ${who}` }, "Accept");
  const decline = h("button", { type: "button", "aria-label": `Decline ${kind.toLowerCase()} from ${who}` }, "Decline");
  const el = h(
    "li",
    { class: fresh ? "offer flash" : "offer", "aria-labelledby": titleId },
    h("h3", { id: titleId }, `${kind} request from ${who}`),
    h("p", { class: "hint" }, offer.direct ? "Asked for you by name." : "From the general line."),
    h("p", { class: "timer" }, "Answer within ", countdown),
    bar,
    h("div", { class: "actions" }, accept, decline),
  );
  accept.addEventListener("click", () => answer(offer.offer_id, "accept", [accept, decline]));
  decline.addEventListener("click", () => answer(offer.offer_id, "decline", [accept, decline]));
  view.offers.set(offer.offer_id, { offer, deadline, el, countdown, bar });
  $("#offers").append(el);
  renderOffers();
  tick();
  if (fresh) {
    alertNewOffer();
    const seconds = Math.max(1, Math.ceil(expiresS));
    notices.info(`New ${kind.toLowerCase()} request from ${who}. Answer within ${seconds} second${seconds === 1 ? "" : "s"}.`);
  }
}

function removeOffer(offerId) {
  const entry = view.offers.get(offerId);
  if (!entry) return;
  const hadFocus = entry.el.contains(document.activeElement);
  entry.el.remove();
  view.offers.delete(offerId);
  renderOffers();
  if (hadFocus) $("#offers-heading").focus();
}

function clearOffers() {
  for (const id of [...view.offers.keys()]) removeOffer(id);
}

function renderOffers() {
  show($("#no-offers"), view.offers.size === 0);
  document.title = view.offers.size ? `(${view.offers.size}) New offer · astroq` : BASE_TITLE;
  if (view.offers.size && !ticker) ticker = setInterval(tick, 250);
  if (!view.offers.size && ticker) {
    clearInterval(ticker);
    ticker = null;
  }
}

function tick() {
  const now = Date.now();
  for (const entry of view.offers.values()) {
    const leftMs = Math.max(0, entry.deadline - now);
    const text = leftMs > 0 ? `${Math.ceil(leftMs / 1000)} s` : "time is up";
    if (entry.countdown.textContent !== text) entry.countdown.textContent = text;
    entry.bar.value = leftMs / 1000;
    entry.el.classList.toggle("urgent", leftMs < 5000);
  }
}

async function answer(offerId, type, buttons) {
  const entry = view.offers.get(offerId);
  if (!entry) return;
  notices.clearError();
  for (const b of buttons) b.disabled = true;
  try {
    await socket.send({ type, offer_id: offerId });
    if (type === "decline") {
      notices.info(`You declined the request from ${entry.offer.user.name}.`);
      removeOffer(offerId);
    }
  } catch (err) {
    notices.error(err);
    if (err.code === "offer_expired" || err.code === "not_found") removeOffer(offerId);
    else for (const b of buttons) b.disabled = false;
  }
}

// ---------------------------------------------------------------- sessions

function addSession(session) {
  if (view.sessions.has(session.session_id)) return;
  const who = session.user ? session.user.name : "a user";
  const kind = view.kindByRequest.get(session.request_id);
  const titleId = `session-${session.session_id}`;
  const end = h("button", { type: "button", class: "danger", "aria-label": `End session with ${who}` }, "End session");
  const el = h(
    "li",
    { class: "session", "aria-labelledby": titleId },
    h("h3", { id: titleId }, `${kind ? KIND_WORDS[kind] : "Session"} with ${who}`),
    h("div", { class: "actions" }, end),
  );
  end.addEventListener("click", async () => {
    notices.clearError();
    end.disabled = true;
    try {
      await socket.send({ type: "end", session_id: session.session_id });
    } catch (err) {
      if (err.code === "already_ended" || err.code === "not_found") removeSession(session.session_id);
      notices.error(err);
      end.disabled = false;
    }
  });
  view.sessions.set(session.session_id, { session, el });
  $("#sessions").append(el);
  show($("#no-sessions"), false);
}

function removeSession(sessionId) {
  const entry = view.sessions.get(sessionId);
  if (!entry) return;
  const hadFocus = entry.el.contains(document.activeElement);
  entry.el.remove();
  view.sessions.delete(sessionId);
  show($("#no-sessions"), view.sessions.size === 0);
  if (hadFocus) $("#sessions-heading").focus();
}

function clearSessions() {
  for (const id of [...view.sessions.keys()]) removeSession(id);
}

// ---------------------------------------------------------------- alert

// Browsers only let audio start after a gesture, so the context is made in one.
let audio = null;
function unlockAudio() {
  if (audio || !window.AudioContext) return;
  try {
    audio = new AudioContext();
  } catch {
    audio = null;
  }
}
window.addEventListener("pointerdown", unlockAudio, { capture: true });
window.addEventListener("keydown", unlockAudio, { capture: true });

function beep() {
  if (!audio || !$("#sound").checked) return;
  if (audio.state === "suspended") audio.resume().catch(() => {});
  const start = audio.currentTime + 0.01;
  for (const [offset, freq] of [
    [0, 880],
    [0.22, 1175],
  ]) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "sine";
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start + offset);
    gain.gain.exponentialRampToValueAtTime(0.2, start + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.18);
    osc.connect(gain).connect(audio.destination);
    osc.start(start + offset);
    osc.stop(start + offset + 0.2);
  }
}

function alertNewOffer() {
  beep();
  // The visual alert for those without sound: the card flashes (app.css) and
  // the tab title counts the open offers.
}

shell.start();

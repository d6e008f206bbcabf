// The room page: conversation, composer, reply controls, presence, typing, voice.
//
// Data flows one way: the connection hands events to the store (store.js), which says
// what changed; this module updates the DOM for that. Sending is optimistic: our message
// shows at once, greyed, and is replaced when its `message` event (same client_id) comes
// back. window.parley exposes the pieces and a few debug handles for tests.
// Speaking a message (push to talk) is speech.js; a transcript comes back as an ordinary
// `message` event whose message has `input: "speech"`, shown with a microphone mark.
// History: the newest page first (exact at its head, so the live connection goes on from
// there), then older pages as the reader scrolls up, to the room's first message.
// Search (search.js) jumps to a message, loading the history around it when it is not on
// the page; the page is then "detached" from the live end (store.detachedAt) until the
// reader pages down to it or clicks "Jump to latest", which loads the newest page again.
// Unread (unread.js): the "new" divider, the read mark sent back while the end is seen,
// and notifications of mentions.

import { ApiError, messages as messagesApi, rooms as roomsApi } from "./api.js";
import { hue, paintAvatar, replyAssistant } from "./assistants.js";
import { AudioPlayer } from "./audio.js";
import { Backoff, Connection } from "./connection.js";
import { wireDrawer } from "./drawer.js";
import { Lifecycle } from "./lifecycle.js";
import { renderInto } from "./markdown.js";
import { wireMembers } from "./members.js";
import { MentionCompleter } from "./mention.js";
import { wireSearch } from "./search.js";
import { PushToTalk } from "./speech.js";
import { LIVE, RoomStore } from "./store.js";
import { VersionView, groupOf, renderVersions, versionsOf } from "./versions.js";
import { UnreadTracker } from "./unread.js";

// A typing indicator fades this long after the last `typing` event from that person.
const TYPING_SHOWN_MS = 4000;
// We tell others we are typing at most this often (the server relays one a second).
const TYPING_SEND_EVERY_MS = 1000;
// Errors stay on screen long enough to read, then fade unless they are fatal.
const ERROR_SHOWN_MS = 8000;
// "Copied" shows on a copy button this long: enough to see, gone before a second copy.
const COPIED_SHOWN_MS = 1500;
// "Near the bottom": closer than this, new text keeps the view pinned to the end.
const PIN_DISTANCE_PX = 80;
// Messages per history request: a screen or two, and one request per scroll to the top.
const HISTORY_PAGE = 50;
// Older messages are fetched while the reader is still this far from the top, so they
// are usually there before the top is reached.
const LOAD_OLDER_WITHIN_PX = 600;

// Reply states shown as a badge; a complete reply needs none.
const BADGED = new Set(["queued", "streaming", "paused", "stopped", "failed", "interrupted"]);

const config = JSON.parse(document.getElementById("parley-config").textContent);
const slug = config.room.slug;
const room = { ...config.room };
const store = new RoomStore(config.me);
// What this listener heard of a reply's audio, for the server (docs/protocol.md "What was heard, and barge-in").
const player = new AudioPlayer({
  onPlayed: (stream, ms) => connection.send({ action: "played", stream, ms }),
});

const $ = (selector) => document.querySelector(selector);
const els = {
  list: $("#messages"),
  empty: $("#empty"),
  history: $("#history"),
  older: $("#older"),
  conn: $("#conn"),
  connText: $("#conn-text"),
  presence: $("#presence"),
  presenceCount: $("#presence-count"),
  typing: $("#typing"),
  errors: $("#errors"),
  announcer: $("#announcer"),
  form: $("#composer"),
  input: $("#composer-input"),
  send: $("#send"),
  askAi: $("#ask-ai"),
  counter: $("#counter"),
  voice: $("#voice-mode"),
  speaker: $("#speaker"),
  transport: $("#transport"),
  jump: $("#jump"),
  sideToggle: $("#side-toggle"),
  side: $("#side"),
  talk: $("#talk"),
  speech: $("#speech"),
  speechText: $("#speech-text"),
  speechLevel: $("#speech-level"),
};

// Edit, delete, rate (lifecycle.js): its buttons and the edit box on each message.
const lifecycle = new Lifecycle({
  me: config.me,
  canManage: Boolean(config.can_manage),
  maxChars: config.max_chars,
  send: (frame) => connection.send(frame),
  onError: (detail) => showError(detail),
});

const elements = new Map(); // message id or client_id -> <article>
// Where waiting replies stand (docs/protocol.md "Waiting in line"): reply id ->
// {position, model_position}, from live `queue` events; dropped once the reply ends.
const places = new Map();

// --- settings (URL beats localStorage beats default) ---

const storageKey = (name) => `parley:${name}`;
function stored(name, fallback) {
  try {
    return localStorage.getItem(storageKey(name)) ?? fallback;
  } catch {
    return fallback;
  }
}
function remember(name, value) {
  try {
    localStorage.setItem(storageKey(name), value);
  } catch {
    // private mode: settings last for this page only
  }
}

const urlTransport = new URLSearchParams(location.search).get("transport");
const transportSetting = ["ws", "sse"].includes(urlTransport) ? urlTransport : stored("transport", "auto");
let speakerOn = stored(`speaker:${slug}`, "off") === "on";

// --- helpers ---

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function announce(text) {
  els.announcer.textContent = text;
}

function showError(detail, { sticky = false } = {}) {
  const item = document.createElement("div");
  item.className = "alert";
  const text = document.createElement("span");
  text.textContent = detail;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "alert__close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => item.remove());
  item.append(text, close);
  els.errors.append(item);
  while (els.errors.children.length > 3) els.errors.firstElementChild.remove();
  if (!sticky) setTimeout(() => item.remove(), ERROR_SHOWN_MS);
}

function isPinned() {
  const l = els.list;
  return l.scrollHeight - l.scrollTop - l.clientHeight < PIN_DISTANCE_PX;
}

function scrollToEnd() {
  els.list.scrollTop = els.list.scrollHeight;
  showJump(false);
}

// The button under the conversation: "New messages" below the reader, or, away from the
// live end (a search result's surroundings), "Jump to latest" at all times.
function showJump(newBelow) {
  const detached = store.detachedAt !== null;
  els.jump.hidden = !(newBelow || detached);
  els.jump.textContent = detached ? "↓ Jump to latest" : "↓ New messages";
}

// Keeps the view at the end while new content arrives, unless the reader scrolled up.
function keepPinned(change) {
  const pinned = isPinned();
  change();
  if (pinned && store.detachedAt === null) scrollToEnd();
  else showJump(true);
}

// --- rendering messages ---

function buildArticle(m, pending) {
  const article = document.createElement("article");
  const mine = m.author === config.me && m.role === "user";
  article.className = `msg msg--${m.role}${mine ? " msg--mine" : ""}${pending ? " msg--pending" : ""}`;
  if (pending) article.dataset.clientId = m.client_id;
  else article.dataset.id = m.id;

  const avatar = document.createElement("div");
  avatar.className = "msg__avatar";
  avatar.setAttribute("aria-hidden", "true");
  if (m.role === "assistant") {
    paintAvatar(avatar, replyAssistant(m, room.assistants));
  } else {
    avatar.textContent = (m.author || "?").slice(0, 1).toUpperCase();
    avatar.style.setProperty("--hue", hue(m.author || "?"));
  }

  const main = document.createElement("div");
  main.className = "msg__main";
  const meta = document.createElement("header");
  meta.className = "msg__meta";
  const author = document.createElement("span");
  author.className = "msg__author";
  if (m.role === "assistant") {
    const who = replyAssistant(m, room.assistants);
    author.textContent = who.name;
    article.dataset.assistant = who.handle;
    author.title = `@${who.handle}`;
  } else {
    author.textContent = m.author || "someone";
  }
  const time = document.createElement("time");
  time.className = "msg__time";
  time.dateTime = m.created;
  time.title = new Date(m.created).toLocaleString();
  time.textContent = formatTime(m.created);
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  meta.append(author, time);
  if (m.input === "speech") {
    article.dataset.input = "speech";
    meta.append(spokenMark());
  }
  meta.append(badge);
  if (!pending) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "btn btn--ghost btn--small msg__copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy message as Markdown");
    meta.append(copy);
  }

  const body = document.createElement("div");
  body.className = "msg__body md";
  const note = document.createElement("p");
  note.className = "msg__note";
  note.hidden = true;
  main.append(meta, body, note);

  if (m.role === "assistant") {
    const controls = document.createElement("div");
    controls.className = "msg__controls";
    controls.setAttribute("role", "group");
    controls.setAttribute("aria-label", "Reply controls");
    for (const [action, label] of [["pause", "Pause"], ["resume", "Resume"], ["stop", "Stop"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `btn btn--small btn--${action}`;
      button.dataset.control = action;
      button.textContent = label;
      controls.append(button);
    }
    controls.hidden = true;
    main.append(controls);
  }
  if (pending) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "btn btn--small msg__retry";
    retry.textContent = "Retry";
    retry.hidden = true;
    retry.addEventListener("click", () => deliver(store.pending.get(m.client_id)));
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "btn btn--ghost btn--small msg__dismiss";
    dismiss.textContent = "Dismiss";
    dismiss.hidden = true;
    dismiss.addEventListener("click", () => dismissPending(m.client_id));
    const actions = document.createElement("div");
    actions.className = "msg__actions";
    actions.append(retry, dismiss);
    main.append(actions);
  }
  article.append(avatar, main);
  return article;
}

const SVG = "http://www.w3.org/2000/svg";
// A microphone glyph: this message was spoken, and is the transcript.
function spokenMark() {
  const mark = document.createElement("span");
  mark.className = "msg__spoken";
  mark.title = "Spoken, transcribed";
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 20 20");
  svg.setAttribute("width", "13");
  svg.setAttribute("height", "13");
  svg.setAttribute("aria-hidden", "true");
  const body = document.createElementNS(SVG, "rect");
  for (const [k, v] of Object.entries({ x: "7", y: "2", width: "6", height: "10", rx: "3", fill: "currentColor" })) {
    body.setAttribute(k, v);
  }
  const stand = document.createElementNS(SVG, "path");
  stand.setAttribute("d", "M4.5 9.5a5.5 5.5 0 0 0 11 0M10 15v3");
  stand.setAttribute("fill", "none");
  stand.setAttribute("stroke", "currentColor");
  stand.setAttribute("stroke-width", "1.6");
  stand.setAttribute("stroke-linecap", "round");
  svg.append(body, stand);
  const words = document.createElement("span");
  words.className = "visually-hidden";
  words.textContent = "(spoken)";
  mark.append(svg, words);
  return mark;
}

function placeCursor(body) {
  let target = body;
  for (;;) {
    const last = target.lastElementChild;
    if (!last || !/^(P|UL|OL|LI|PRE|CODE|BLOCKQUOTE|H[3-6])$/.test(last.tagName)) break;
    target = last;
  }
  const cursor = document.createElement("span");
  cursor.className = "cursor";
  cursor.setAttribute("aria-hidden", "true");
  target.append(cursor);
}

function noteFor(m) {
  const by = m.by ? ` by ${m.by}` : "";
  switch (m.status) {
    case "paused":
      return `Paused${by}`;
    case "stopped":
      return m.reason === "pause_timeout" ? "Stopped: paused for too long" : `Stopped${by}`;
    case "failed":
      return `The reply failed${m.reason ? `: ${m.reason}` : "."}`;
    case "interrupted":
      return `Interrupted${m.reason ? `: ${m.reason}` : ""}. The text so far is kept.`;
    case "complete": {
      const t = m.metrics;
      if (!t || !t.tokens) return "";
      const seconds = t.duration_ms ? ` · ${(t.duration_ms / 1000).toFixed(1)} s` : "";
      return `${t.tokens} tokens${seconds}`;
    }
    default:
      return "";
  }
}

function renderBody(article, m) {
  const body = article.querySelector(".msg__body");
  const live = m.role === "assistant" && LIVE.has(m.status);
  body.querySelector(".cursor")?.remove();
  // Only the blocks the new text changed are rendered again (markdown.js).
  renderInto(body, m.text, { streaming: live });
  if (live) placeCursor(body);
  body.setAttribute("aria-busy", live ? "true" : "false");
}

// 1st, 2nd, 3rd, 4th ... 11th, 12th, 13th ... 21st
function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

// A waiting reply's badge says where it stands: in the room's line while queued, in the
// model's line (the bundled model writes one reply at a time) once its turn has come.
function badgeText(m) {
  const place = places.get(m.id);
  if (!LIVE.has(m.status)) places.delete(m.id);
  if (!place) return m.status;
  if (m.status === "queued" && place.position > 1) return `queued · ${ordinal(place.position)} in line`;
  if (m.status === "streaming" && !m.text && place.model_position > 1) {
    return `waiting for the model · ${ordinal(place.model_position)} in line`;
  }
  return m.status;
}

function renderMessage(article, m) {
  // A reply shows the version the reader looks at (versions.js); its controls act on it.
  const head = m;
  if (m.role === "assistant") m = versionView.shown(store, head);
  article.dataset.shown = m.id;
  article.dataset.status = m.status;
  if (m.role === "assistant") renderAuthor(article, m);
  renderBody(article, m);
  const badge = article.querySelector(".badge");
  const badged = BADGED.has(m.status);
  badge.hidden = !badged;
  badge.textContent = badged ? badgeText(m) : "";
  badge.className = `badge badge--${m.status}`;
  const note = article.querySelector(".msg__note");
  const noteText = m.role === "assistant" ? noteFor(m) : "";
  note.textContent = noteText;
  note.hidden = !noteText;
  note.classList.toggle("msg__note--muted", m.status === "complete");
  const controls = article.querySelector(".msg__controls");
  if (controls) {
    const live = LIVE.has(m.status);
    controls.hidden = !live;
    const allowed = store.canControl(m, { owner: room.owner, isStaff: config.is_staff });
    const enabled = {
      pause: m.status === "streaming",
      resume: m.status === "paused",
      stop: live,
    };
    for (const button of controls.querySelectorAll("button")) {
      button.disabled = !allowed || !enabled[button.dataset.control];
      button.title = allowed ? "" : "Only the asker, the room owner or staff can control this reply";
    }
    const versions = versionsOf(store, head);
    renderVersions(article, { head, shown: m, versions, allowed, live: versions.some((v) => LIVE.has(v.status)) });
  }
  lifecycle.render(article, m);
}

// Who wrote a reply: its assistant's name and avatar (set again as a replay or a `room`
// event may bring them later than the article was made).
function renderAuthor(article, m) {
  const who = replyAssistant(m, room.assistants);
  article.dataset.assistant = who.handle;
  const author = article.querySelector(".msg__author");
  author.textContent = who.name;
  author.title = `@${who.handle}`;
  paintAvatar(article.querySelector(".msg__avatar"), who);
}

function renderPending(article, p) {
  article.dataset.status = p.status;
  renderBody(article, p);
  const note = article.querySelector(".msg__note");
  note.textContent = p.error ? `Not sent: ${p.error}` : "";
  note.hidden = !p.error;
  article.querySelector(".msg__retry").hidden = p.status !== "failed";
  article.querySelector(".msg__dismiss").hidden = p.status !== "failed";
}

// A failed message the writer gives up on: gone from the page (it was never stored).
function dismissPending(clientId) {
  const p = store.pending.get(clientId);
  if (!p || p.status !== "failed") return;
  store.pending.delete(clientId);
  elements.get(clientId)?.remove();
  elements.delete(clientId);
  els.empty.hidden = store.messages.size + store.pending.size > 0;
  els.input.focus();
}

function firstPendingArticle() {
  return els.list.querySelector(".msg--pending");
}

// A message's article goes in its place by id: before the next message on the page, or
// after the last (and before our pending ones). `last`: known to be the last on the page.
function insertMessage(id, { last = false } = {}) {
  const m = store.get(id);
  if (m.version_of) {
    // A later version shows in its reply's article (versions.js), not in one of its own.
    const headArticle = elements.get(m.version_of);
    const head = store.get(m.version_of);
    if (headArticle && head) renderMessage(headArticle, head);
    return;
  }
  const article = buildArticle(m, false);
  elements.set(id, article);
  renderMessage(article, m);
  let next = null;
  if (!last) {
    for (const after of store.idsAfter(id)) {
      next = elements.get(after);
      if (next) break;
    }
  }
  els.list.insertBefore(article, next || firstPendingArticle());
  els.empty.hidden = true;
  els.history.hidden = false;
}

function renderAll() {
  keepPinned(() => {
    for (const article of els.list.querySelectorAll(".msg")) article.remove();
    elements.clear();
    for (const id of store.messages.keys()) insertMessage(id, { last: true });
    for (const p of store.pending.values()) addPendingArticle(p);
    els.empty.hidden = store.messages.size + store.pending.size > 0;
    els.history.hidden = store.messages.size === 0;
    unread.placeDivider(elements);
  });
}

function addPendingArticle(p) {
  const article = buildArticle(p, true);
  elements.set(p.client_id, article);
  renderPending(article, p);
  els.list.append(article);
  els.empty.hidden = true;
}

// Streaming text is rendered once per animation frame, however many deltas arrived.
const dirty = new Set();
let frameQueued = false;
function markDirty(id) {
  dirty.add(id);
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(() => {
    frameQueued = false;
    keepPinned(() => {
      for (const dirtyId of dirty) {
        const article = elements.get(dirtyId);
        const m = store.get(dirtyId);
        if (article && m) renderBody(article, m.role === "assistant" ? versionView.shown(store, m) : m);
      }
    });
    dirty.clear();
  });
}

function refreshControls() {
  for (const [id, article] of elements) {
    const m = store.get(id);
    if (m && m.role === "assistant" && LIVE.has(versionView.shown(store, m).status)) renderMessage(article, m);
  }
}

// --- events from the room ---

let syncedConn = null; // the connection whose replay is known to be complete

function onHello(hello, conn) {
  setRoom(hello.room);
  syncedConn = null;
  setPresence(hello.online);
  if (connection.transport === "ws") {
    if (speakerOn) connection.send({ action: "audio", enabled: true });
    // The server replays before it reads our frames: this pong marks the end of the replay.
    connection.send({ action: "ping", id: `sync-${conn}` });
  } else {
    // Over SSE, sends go over HTTP whatever the stream is doing; this catches messages
    // written while the page was still trying the WebSocket.
    syncedConn = conn;
    for (const p of store.pending.values()) if (p.status === "sending" && p.conn === null) deliver(p);
  }
}

function onEvent(event) {
  if (typeof event.seq === "number") {
    onDurable(event);
    reportRead();
    return;
  }
  switch (event.type) {
    case "presence":
      setPresence(event.online);
      break;
    case "typing":
      if (event.username !== config.me) showTyping(event.username);
      break;
    case "error":
      onError(event);
      break;
    case "audio":
      if (speakerOn) player.onEvent(event);
      break;
    case "speech":
      talk.onSpeech(event);
      break;
    case "queue":
      for (const place of event.replies || []) {
        places.set(place.message_id, place);
        const m = store.get(place.message_id);
        const article = elements.get(place.message_id);
        if (m && article) renderMessage(article, m);
      }
      break;
    case "pong":
      if (event.id === `sync-${connection.conn}`) {
        syncedConn = connection.conn;
        for (const p of store.pending.values()) {
          if (p.status === "sending" && p.conn !== syncedConn) deliver(p);
        }
      }
      break;
    default:
      break;
  }
}

function onDurable(event) {
  const change = store.apply(event);
  switch (change.kind) {
    case "gap":
      connection.resync();
      return;
    case "duplicate":
    case "unknown":
      return;
    case "beyond":
      // A new message past a detached stretch: not shown until the reader goes back to
      // the live end, which the button offers.
      showJump(true);
      return;
    case "room":
      setRoom(change.room);
      return;
    case "snapshot":
      // A conversation that starts again at the snapshot may have older messages again.
      if (!change.keptOlder) setHistory("more");
      renderAll();
      return;
    case "message": {
      const m = store.get(change.id);
      if (m.version_of) {
        // A new version of a reply: its article shows it, as it streams.
        versionView.follow(m.version_of);
        keepPinned(() => insertMessage(change.id));
        if (change.isNew) announce(`${replyAssistant(m, room.assistants).name} is answering again.`);
        return;
      }
      keepPinned(() => {
        if (change.confirmed) {
          elements.get(change.confirmed)?.remove();
          elements.delete(change.confirmed);
        }
        const article = elements.get(change.id);
        if (article) renderMessage(article, m);
        else insertMessage(change.id);
      });
      if (m.role === "user") clearTyping(m.author);
      if (change.isNew) unread.onMessage(m);
      if (m.role === "assistant" && change.isNew) announce(`${replyAssistant(m, room.assistants).name} is replying.`);
      return;
    }
    case "delta":
      if (!change.missing) markDirty(groupOf(store.get(change.id)));
      return;
    case "version": {
      if (change.missing) return;
      versionView.follow(change.id);
      const article = elements.get(change.id);
      if (article) keepPinned(() => renderMessage(article, store.get(change.id)));
      return;
    }
    case "lifecycle": {
      // An edit, a delete or new rating counts (lifecycle.js draws them). A later version
      // of a reply is drawn in its reply's article.
      if (change.missing) return;
      const headId = groupOf(store.get(change.id));
      const article = elements.get(headId);
      if (article) keepPinned(() => renderMessage(article, store.get(headId)));
      if (change.type === "delete") announce(`A message was deleted by ${change.by}.`);
      return;
    }
    case "generation": {
      if (change.missing) return;
      const headId = groupOf(store.get(change.id));
      const m = store.get(headId);
      const article = elements.get(headId);
      if (article) keepPinned(() => renderMessage(article, m));
      if (speakerOn) player.onGeneration(change.id, change.state);
      const by = change.by ? ` by ${change.by}` : "";
      const words = {
        paused: `Reply paused${by}.`,
        streaming: "",
        complete: "Reply complete.",
        stopped: `Reply stopped${by}.`,
        failed: "The reply failed.",
        interrupted: "The reply was interrupted.",
      };
      if (words[change.state]) announce(words[change.state]);
      return;
    }
    default:
  }
}

// --- the room's settings, live ---

// The voice mode in words, as the composer's select names them.
const VOICE_LABELS = { off: "Off", normal: "After the reply", streaming: "Sentence by sentence", realtime: "Real time" };

// The room as `hello` or a `room` event (docs/protocol.md "room") has it: its name, voice
// and assistants on the page, and for `@` completion.
function setRoom(next) {
  if (!next) return;
  Object.assign(room, next);
  room.assistants = next.assistants || room.assistants || [];
  const title = $(".room__title h1");
  if (title && title.textContent !== room.name) {
    title.textContent = room.name;
    document.title = `${room.name} · Parley`;
    els.input.placeholder = `Message ${room.name}`;
  }
  const voice = $("#room-voice");
  if (voice && room.voice && voice.dataset.voice !== room.voice) {
    voice.dataset.voice = room.voice;
    const label = VOICE_LABELS[room.voice] || room.voice;
    voice.textContent = room.voice === "off" ? "Voice off" : `Spoken: ${label.toLowerCase()}`;
  }
  showAssistants();
  for (const [id, article] of elements) {
    const m = store.get(id);
    if (m && m.role === "assistant") renderAuthor(article, m);
  }
  refreshControls(); // who may control a reply follows the room's owner
}

// The room's assistants in the header (who answers what) and in the details panel.
function showAssistants() {
  const assistants = room.assistants || [];
  const answers = $("#room-answers");
  if (answers) answers.textContent = answersText(assistants);
  const list = $("#room-assistants");
  if (!list) return;
  list.replaceChildren();
  for (const a of assistants) {
    const row = document.createElement("span");
    row.className = "fact-assistant";
    const avatar = document.createElement("span");
    avatar.className = "mention__avatar";
    avatar.setAttribute("aria-hidden", "true");
    paintAvatar(avatar, a);
    const words = document.createElement("span");
    words.textContent = `${a.name} (@${a.handle}) · ${a.mode === "always" ? "every message" : "when mentioned"}`;
    row.append(avatar, words);
    list.append(row);
  }
  if (!assistants.length) list.textContent = "None";
}

// Who answers what, in a few words for the header.
function answersText(assistants) {
  if (!assistants.length) return "No assistant";
  const always = assistants.find((a) => a.mode === "always");
  const others = assistants.filter((a) => a !== always).map((a) => `@${a.handle}`);
  if (always && !others.length) return `${always.name} answers every message`;
  if (always) return `${always.name} answers every message · ${others.join(", ")} when mentioned`;
  return `Mention ${others.join(", ")} to ask`;
}

// Who `@` offers: the room's assistants, then the members (the page's list and whoever
// is here now).
let online = [];
function mentionCandidates() {
  const list = (room.assistants || []).map((a) => ({ kind: "assistant", ...a }));
  const here = new Set(online);
  const members = new Set(here);
  for (const li of document.querySelectorAll("#members [data-username]")) members.add(li.dataset.username);
  for (const name of members) {
    if (name !== config.me) list.push({ kind: "member", handle: name, name, avatar: "", online: here.has(name) });
  }
  return list;
}

const mentions = new MentionCompleter({ input: els.input, list: $("#mention-list"), candidates: mentionCandidates });

function onError(event) {
  if (talk.onError(event)) return;
  const pending = event.id ? store.pending.get(event.id) : null;
  let detail = event.detail || event.code || "something went wrong";
  if (event.code === "rate_limited" && event.retry_after) {
    detail += ` (try again in ${Math.ceil(event.retry_after)} s)`;
  }
  if (pending) {
    failPending(pending, detail);
  } else {
    showError(detail);
  }
}

// --- presence and typing ---

function setPresence(here) {
  online = here;
  els.presence.replaceChildren();
  const names = [...new Set(here)].sort((a, b) =>
    a === config.me ? -1 : b === config.me ? 1 : a.localeCompare(b),
  );
  for (const name of names) {
    const li = document.createElement("li");
    li.className = "person";
    const dot = document.createElement("span");
    dot.className = "person__avatar";
    dot.setAttribute("aria-hidden", "true");
    dot.style.setProperty("--hue", hue(name));
    dot.textContent = name.slice(0, 1).toUpperCase();
    const label = document.createElement("span");
    label.className = "person__name";
    label.textContent = name === config.me ? `${name} (you)` : name;
    li.append(dot, label);
    els.presence.append(li);
  }
  els.presenceCount.textContent = String(names.length);
  for (const name of typists.keys()) if (!names.includes(name)) clearTyping(name);
}

const typists = new Map(); // username -> timeout
function showTyping(username) {
  clearTimeout(typists.get(username));
  typists.set(username, setTimeout(() => clearTyping(username), TYPING_SHOWN_MS));
  renderTyping();
}
function clearTyping(username) {
  if (!typists.has(username)) return;
  clearTimeout(typists.get(username));
  typists.delete(username);
  renderTyping();
}
function renderTyping() {
  const names = [...typists.keys()];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  els.typing.textContent = text;
  els.typing.classList.toggle("typing--on", Boolean(text));
}

// --- sending ---

function failPending(p, detail) {
  p.status = "failed";
  p.error = detail;
  const article = elements.get(p.client_id);
  if (article) renderPending(article, p);
}

function deliver(p) {
  if (!p) return;
  p.status = "sending";
  p.error = null;
  const article = elements.get(p.client_id);
  if (article) renderPending(article, p);
  const fields = { text: p.text, client_id: p.client_id, voice: els.voice.value };
  if (p.askAi) fields.ask_ai = true;
  if (connection.transport === "ws") {
    // Sent now if the connection is caught up; otherwise when it is (see onEvent "pong").
    if (syncedConn === connection.conn && connection.send({ action: "send", id: p.client_id, ...fields })) {
      p.conn = syncedConn;
    }
    return;
  }
  p.conn = connection.conn;
  roomsApi
    .send(slug, fields)
    .then((result) => {
      for (const m of [result.message, result.reply]) {
        if (!m) continue;
        const change = store.upsert(m, { keep: true });
        if (change.confirmed) {
          elements.get(change.confirmed)?.remove();
          elements.delete(change.confirmed);
        }
        if (!elements.has(m.id)) keepPinned(() => insertMessage(m.id));
      }
    })
    .catch((err) => failPending(p, err instanceof ApiError ? err.detail : String(err)));
}

function submit() {
  const text = els.input.value;
  if (!text.trim()) return;
  if (text.length > config.max_chars) {
    showError(`A message can be at most ${config.max_chars} characters.`);
    return;
  }
  if (store.detachedAt !== null) goLive(); // what one sends shows at the live end
  const p = store.addPending(text);
  p.askAi = Boolean(els.askAi && els.askAi.checked);
  // "Ask the assistant" is for this message: the next one asks again only if ticked again.
  if (els.askAi) els.askAi.checked = false;
  keepPinned(() => addPendingArticle(p));
  scrollToEnd();
  els.input.value = "";
  onInput();
  deliver(p);
  els.input.focus();
}

let lastTypingSent = 0;
function onInput() {
  const { input } = els;
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 220)}px`;
  const left = config.max_chars - input.value.length;
  const over = left < 0;
  els.counter.textContent = over
    ? `${-left} ${left === -1 ? "character" : "characters"} over the limit of ${config.max_chars}`
    : left < 500
      ? `${left}`
      : "";
  els.counter.classList.toggle("counter--over", over);
  els.send.disabled = !input.value.trim() || over;
  els.send.title = over ? "Too long to send: shorten the message" : "";
}

function maybeSendTyping() {
  const now = Date.now();
  if (!els.input.value.trim() || now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
  if (connection.send({ action: "typing" })) lastTypingSent = now;
}

// --- controls ---

let controlIds = 0;
function control(messageId, action) {
  controlIds += 1;
  // The server hears what this listener heard first: a fresh `played` (for stop, the
  // last one, as the reply's audio stops here at once).
  if (action === "stop") player.stopMessage(messageId);
  else player.reportNow();
  if (connection.send({ action, message_id: messageId, id: `ctl-${controlIds}` })) return;
  messagesApi
    .control(messageId, action)
    .catch((err) => showError(err instanceof ApiError ? err.detail : String(err)));
}

// --- versions of a reply (versions.js) ---

const versionView = new VersionView();
let versionActions = 0;
function onVersionButton(article, kind) {
  const head = store.get(article.dataset.id);
  if (!head) return;
  if (kind === "version-prev" || kind === "version-next") {
    versionView.page(store, head, kind === "version-prev" ? -1 : 1);
    renderMessage(article, head);
    return;
  }
  const action = kind === "regenerate" ? "regenerate" : "pick_version";
  const target = action === "regenerate" ? head.id : article.dataset.shown;
  versionActions += 1;
  if (connection.send({ action, message_id: target, id: `ver-${versionActions}` })) return;
  messagesApi[action === "regenerate" ? "regenerate" : "pick"](target)
    .catch((err) => showError(err instanceof ApiError ? err.detail : String(err)));
}

// --- the connection indicator ---

let countdown = null;
function onStatus(status) {
  clearInterval(countdown);
  countdown = null;
  if (status.state === "reconnecting" && status.retryIn) {
    // Count down to the next attempt, a second at a time.
    const at = Date.now() + status.retryIn;
    countdown = setInterval(() => {
      const left = at - Date.now();
      if (left <= 0) clearInterval(countdown);
      else els.connText.textContent = `Reconnecting in ${Math.ceil(left / 1000)} s…`;
    }, 1000);
  }
  const via = status.transport === "sse" ? "server-sent events" : "WebSocket";
  let text;
  switch (status.state) {
    case "open":
      text = status.transport === "sse"
        ? status.fellBack
          ? "Live via server-sent events (WebSocket blocked)"
          : "Live via server-sent events"
        : "Live";
      break;
    case "connecting":
      text = `Connecting (${via})…`;
      break;
    case "reconnecting":
      text = status.retryIn ? `Reconnecting in ${Math.ceil(status.retryIn / 1000)} s…` : "Reconnecting…";
      break;
    default:
      text = status.detail || "Disconnected";
  }
  els.conn.dataset.state = status.state;
  els.conn.dataset.transport = status.transport;
  els.connText.textContent = text;
  els.form.classList.toggle("composer--sse", status.transport === "sse");
  talk.onConnection(status.state === "open" && status.transport === "ws");
  if (status.state === "closed") showError(text, { sticky: true });
}

// --- older messages, as the reader scrolls up ---

let historyState = "more"; // "more" | "loading" | "start" | "failed"

function setHistory(state) {
  historyState = state;
  els.history.dataset.state = state;
  els.older.disabled = state === "loading";
  els.older.textContent = state === "failed" ? "Could not load earlier messages. Try again" : "Load earlier messages";
}

// Runs `change` (older messages added above the reader) without moving what they are
// looking at: the message that was at the top keeps its place on screen. (The browser's
// own scroll anchoring may have done it already; measured on the same message, this then
// moves nothing.)
function keepingPlace(change) {
  const anchor = els.list.querySelector(".msg[data-id]");
  const before = anchor ? anchor.getBoundingClientRect().top : 0;
  change();
  if (anchor) els.list.scrollTop += anchor.getBoundingClientRect().top - before;
}

async function loadOlder() {
  if (historyState === "loading" || historyState === "start") return;
  const oldest = store.oldestId();
  if (oldest === undefined) return;
  setHistory("loading");
  let page;
  try {
    page = await roomsApi.messages(slug, { before: oldest, limit: HISTORY_PAGE });
  } catch (err) {
    setHistory("failed");
    showError(`Could not load earlier messages: ${err instanceof ApiError ? err.detail : err}`);
    return;
  }
  if (store.oldestId() !== oldest) {
    // A snapshot started the conversation again meanwhile: this page may not join on.
    setHistory("more");
    return;
  }
  const added = store.addOlder(page.messages);
  keepingPlace(() => {
    for (const id of added) insertMessage(id);
    setHistory(page.messages.length < HISTORY_PAGE ? "start" : "more");
    unread.placeDivider(elements);
  });
  if (historyState === "start") announce("This is the start of the conversation.");
  maybeLoadOlder();
}

// Near the top, or with too few messages to scroll at all: fetch the page before them.
function maybeLoadOlder() {
  if (historyState !== "more" || !store.messages.size) return;
  if (els.list.scrollTop < LOAD_OLDER_WITHIN_PX || els.list.scrollHeight <= els.list.clientHeight) {
    loadOlder();
  }
}

// --- jumping to a message, and back to the live end ---

// How long a message jumped to stays highlighted (the CSS animation's length).
const FOUND_SHOWN_MS = 2400;

function highlight(id) {
  const article = elements.get(id);
  if (!article) return false;
  article.scrollIntoView({ block: "center" });
  article.classList.remove("msg--found");
  void article.offsetWidth; // restart the animation on a second jump to the same message
  article.classList.add("msg--found");
  setTimeout(() => article.classList.remove("msg--found"), FOUND_SHOWN_MS);
  return true;
}

// A search result: on the page already, scroll to it; otherwise load the history around
// it in place of the conversation, detached from the live end while newer pages remain.
async function jumpTo(id) {
  if (highlight(id)) return;
  let page;
  try {
    page = await roomsApi.messages(slug, { around: id, limit: HISTORY_PAGE });
  } catch (err) {
    showError(`Could not load that message: ${err instanceof ApiError ? err.detail : err}`);
    return;
  }
  store.loadWindow(page.messages, page.has_newer);
  setHistory(page.has_older ? "more" : "start");
  newerState = "more";
  renderAll();
  highlight(id);
  showJump(false);
}

let newerState = "more"; // "more" | "loading": paging down a detached stretch

// Near the end of a detached stretch: the page after it, or, once the last one is in,
// the live end itself.
async function maybeLoadNewer() {
  if (store.detachedAt === null || newerState === "loading") return;
  const l = els.list;
  if (l.scrollHeight - l.scrollTop - l.clientHeight > LOAD_OLDER_WITHIN_PX) return;
  newerState = "loading";
  const newest = store.detachedAt;
  let page;
  try {
    page = await roomsApi.messages(slug, { after: newest, limit: HISTORY_PAGE });
  } catch (err) {
    newerState = "more";
    showError(`Could not load later messages: ${err instanceof ApiError ? err.detail : err}`);
    return;
  }
  if (store.detachedAt !== newest) {
    newerState = "more"; // went live (or jumped elsewhere) meanwhile
    return;
  }
  if (page.messages.length < HISTORY_PAGE) {
    // The last of it: join the live end (the newest page, exact at its head).
    await goLive({ toEnd: false });
    newerState = "more";
    return;
  }
  for (const id of store.addNewer(page.messages)) insertMessage(id);
  newerState = "more";
}

// Back to the live end: the newest page, exact at its head, taken as a snapshot is (it
// joins the stretch on the page if they meet; otherwise it replaces it). Events after
// its head follow from the connection as usual (a gap makes it resume from the head).
async function goLive({ toEnd = true } = {}) {
  let page;
  try {
    page = await roomsApi.messages(slug, { limit: HISTORY_PAGE });
  } catch (err) {
    showError(`Could not load the latest messages: ${err instanceof ApiError ? err.detail : err}`);
    return;
  }
  const change = store.apply({ type: "snapshot", seq: page.head, messages: page.messages });
  if (!change.keptOlder) setHistory(page.messages.length < HISTORY_PAGE ? "start" : "more");
  renderAll();
  if (toEnd) scrollToEnd();
  else showJump(false);
}

// --- read mark ---

const unread = new UnreadTracker({
  me: config.me,
  slug,
  roomName: room.name,
  firstUnread: config.first_unread,
  lastReadSeq: config.last_read_seq,
  send: (seq) => {
    if (connection.transport === "ws") return connection.send({ action: "read", seq });
    roomsApi.read(slug, seq).catch(() => {}); // the next read tries again
    return true;
  },
});

// The reader sees the live end (visible tab, scrolled to the bottom): the read mark
// moves up to the last event the page holds.
function reportRead() {
  if (store.detachedAt !== null || document.hidden || !isPinned()) return;
  unread.seen(store.lastSeq);
}

// --- wiring ---

const connection = new Connection({
  slug,
  mode: transportSetting,
  handlers: {
    after: () => store.lastSeq,
    audio: () => speakerOn,
    hello: onHello,
    event: onEvent,
    binary: (buffer) => {
      if (speakerOn) player.onBinary(buffer);
    },
    status: onStatus,
  },
});

const talk = new PushToTalk({
  button: els.talk,
  status: els.speech,
  text: els.speechText,
  level: els.speechLevel,
  workletUrl: els.talk.dataset.worklet,
  io: {
    send: (frame) => connection.send(frame),
    sendBinary: (buffer) => connection.sendBinary(buffer),
    ready: () => connection.transport === "ws" && connection.ready,
    // Barge-in: the last `played` of whatever plays goes out before `speech start`, and
    // the audio stops here at once (the server stops our own reply's audio for the room).
    beforeStart: () => player.bargeIn(),
    // Called once, as an utterance is sent: "Ask the assistant" resets as for a typed send.
    fields: () => {
      const fields = { voice: els.voice.value };
      if (els.askAi && els.askAi.checked) fields.ask_ai = true;
      if (els.askAi) els.askAi.checked = false;
      return fields;
    },
    announce,
  },
});

function setSpeaker(on) {
  speakerOn = on;
  remember(`speaker:${slug}`, on ? "on" : "off");
  els.speaker.setAttribute("aria-pressed", String(on));
  els.speaker.querySelector(".speaker__label").textContent = on ? "Speaker on" : "Speaker off";
  if (on) player.unlock();
  else player.cancelAll();
  if (connection.transport === "ws") connection.send({ action: "audio", enabled: on });
  else connection.refreshSse();
}

// A voice room offers the speaker once, with one click (browsers start audio only after a
// user gesture, so it cannot simply be on). The answer is kept per room, as the speaker
// button's own choice is, and the offer is not made again once there is one.
function offerSpeaker() {
  const offer = $("#voice-offer");
  if (!offer || stored(`speaker:${slug}`, null) !== null) return;
  offer.hidden = false;
  const answer = (on) => {
    offer.hidden = true;
    setSpeaker(on);
  };
  $("#voice-offer-on").addEventListener("click", () => answer(true));
  $("#voice-offer-off").addEventListener("click", () => answer(false));
  // Choosing with the speaker button itself answers the offer too.
  els.speaker.addEventListener("click", () => (offer.hidden = true));
}

function wire() {
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  els.input.addEventListener("keydown", (e) => {
    if (mentions.onKeydown(e)) return;
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  els.input.addEventListener("input", () => {
    onInput();
    maybeSendTyping();
  });
  els.list.addEventListener("click", (e) => {
    const article = e.target.closest(".msg[data-id]");
    if (article && lifecycle.onClick(e, article, store.get(article.dataset.id))) return;
    const button = e.target.closest("button[data-control]");
    if (button) {
      const article = button.closest(".msg");
      control(article.dataset.shown || article.dataset.id, button.dataset.control);
      return;
    }
    const versionButton = e.target.closest("button[data-version]");
    if (versionButton) {
      onVersionButton(versionButton.closest(".msg"), versionButton.dataset.version);
      return;
    }
    // Copy: a code block's own text, or a whole message as the Markdown it was written in.
    const copy = e.target.closest("button.copy, button.msg__copy");
    if (copy) {
      const text = copy.classList.contains("copy")
        ? copy.closest("pre").querySelector("code").textContent
        : store.get(copy.closest(".msg").dataset.shown || copy.closest(".msg").dataset.id)?.text;
      if (text === undefined || !navigator.clipboard) return;
      const said = (word) => {
        copy.textContent = word;
        setTimeout(() => (copy.textContent = "Copy"), COPIED_SHOWN_MS);
      };
      // Refused (no permission, page not focused): say so rather than fail silently.
      navigator.clipboard.writeText(text).then(() => said("Copied"), () => said("Not copied"));
    }
  });
  els.list.addEventListener("scroll", () => {
    if (isPinned()) showJump(false);
    maybeLoadOlder();
    maybeLoadNewer();
    reportRead();
  });
  els.older.addEventListener("click", loadOlder);
  els.jump.addEventListener("click", () => {
    if (store.detachedAt !== null) goLive();
    else scrollToEnd();
  });
  document.addEventListener("visibilitychange", reportRead);
  wireSearch({
    slug,
    form: $("#search"),
    input: $("#search-input"),
    results: $("#search-results"),
    onJump: jumpTo,
    formatTime,
  });
  unread.wireToggle($("#notify-toggle"));

  els.voice.value = stored(`voice:${slug}`, room.voice);
  els.voice.addEventListener("change", () => remember(`voice:${slug}`, els.voice.value));
  els.speaker.addEventListener("click", () => setSpeaker(!speakerOn));
  offerSpeaker();
  els.speaker.setAttribute("aria-pressed", String(speakerOn));
  els.speaker.querySelector(".speaker__label").textContent = speakerOn ? "Speaker on" : "Speaker off";

  els.transport.value = transportSetting;
  els.transport.addEventListener("change", () => {
    remember("transport", els.transport.value);
    const url = new URL(location.href);
    url.searchParams.delete("transport");
    location.assign(url);
  });
  wireDrawer({
    toggle: els.sideToggle,
    side: els.side,
    close: $("#side-close"),
    backdrop: $("#side-backdrop"),
  });
  // Autoplay policy: the audio context may only start after the user's first gesture.
  const unlock = () => {
    if (speakerOn) player.unlock();
  };
  document.addEventListener("pointerdown", unlock, { once: true });
  document.addEventListener("keydown", unlock, { once: true });
  talk.wire();
  mentions.wire();
  wireMembers({ slug, onError: (detail) => showError(detail) });
  onInput();
}

// The newest page. It is exact at its `head` (a reply being written has the text members
// had at that seq), so the connection goes on with `after=head`: nothing missed, nothing
// twice. Until it loads there is nothing to go on from, so it is tried again, with
// backoff; a refusal (signed out, not a member) is left to the connection to explain.
async function loadLatest() {
  const backoff = new Backoff();
  for (;;) {
    try {
      return await roomsApi.messages(slug, { limit: HISTORY_PAGE });
    } catch (err) {
      if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) return null;
      const wait = backoff.next();
      showError(`Could not load the conversation: ${err.detail || err}. Trying again in ${Math.ceil(wait / 1000)} s.`);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

async function start() {
  wire();
  showAssistants();
  setHistory("more");
  const page = await loadLatest();
  if (page) {
    store.load(page.messages, page.head);
    if (page.messages.length < HISTORY_PAGE) setHistory("start");
  }
  renderAll();
  scrollToEnd();
  maybeLoadOlder();
  connection.start();
  reportRead();
}

window.parley = {
  store,
  jumpTo,
  goLive,
  room,
  player,
  get speech() {
    return talk;
  },
  get connection() {
    return connection;
  },
  debugDropSocket: () => connection.drop(),
  debugState: () => ({
    transport: connection.transport,
    ready: connection.ready,
    connects: connection.connects,
    lastSeq: store.lastSeq,
    audio: player.debugState(),
    speech: talk.debugState(),
  }),
};

start();

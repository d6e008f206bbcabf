// The live connection to a room: a WebSocket, or server-sent events when the WebSocket
// cannot get through (a proxy that blocks it). Reconnects with exponential backoff and
// jitter, always resuming after the last seq the page holds, so nothing is missed or
// applied twice. Sending over SSE is the caller's business (HTTP); `send` and `sendBinary`
// say whether the frame went out on the socket.

// Backoff: 0.5 s doubling to 15 s, each delay drawn between half and all of it (jitter),
// so a room's members do not all come back at the same instant after a server restart.
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
// A WebSocket that has not said hello by then is as good as blocked.
const HELLO_TIMEOUT_MS = 8000;
// In automatic mode, this many WebSocket attempts in a row without a hello (and never one
// since the page loaded) switch the page to SSE.
const WS_FAILURES_BEFORE_SSE = 2;
// Heartbeat: a ping every 20 s; no pong within 10 s means the connection is dead even if
// the browser has not noticed (a half-open TCP connection after a network change).
const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;

// An EventSource hears only the event names it listens for: a durable type missing here
// would never reach the store, and the next event would look like a gap (a resync that
// replays the same missed event). Every durable type the server sends must be listed.
const SSE_EVENT_TYPES = [
  "hello", "presence", "typing", "message", "delta", "generation", "snapshot", "room", "queue", "error", "audio",
  "version",
  "pong",
  "pong", "edit", "delete", "rating",
];

// Close codes after which trying again cannot help (the server's list, with its reasons,
// is core/contract.py; tests/test_contract.py checks that this one agrees).
const FATAL_CLOSES = {
  1009: "A message was too large for the server. Reload the page.",
  4401: "You are signed out. Log in again to rejoin the room.",
  4403: "You are not a member of this room.",
  4404: "This room no longer exists.",
};

export class Backoff {
  constructor(base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS) {
    this.base = base;
    this.cap = cap;
    this.attempt = 0;
  }

  next() {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  reset() {
    this.attempt = 0;
  }
}

export class Connection {
  // handlers: after() -> seq or null, audio() -> bool, hello(ev, conn), event(ev, conn),
  // binary(arrayBuffer), status({state, transport, fellBack, retryIn, detail}).
  constructor({ slug, mode, handlers }) {
    this.slug = slug;
    this.mode = mode; // "auto" | "ws" | "sse"
    this.transport = mode === "sse" ? "sse" : "ws";
    this.fellBack = false;
    this.h = handlers;
    this.backoff = new Backoff();
    this.conn = 0; // increases with every connection attempt
    this.socket = null;
    this.source = null;
    this.timer = null;
    this.heartbeat = null;
    this.ready = false; // hello received on the current connection
    this.everHello = false;
    this.wsFailures = 0;
    this.closed = false;
    this.connects = 0; // connections that said hello, for tests and the status line
  }

  start() {
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
    this.open();
  }

  // Called when the page learns it is out of step (a gap in seqs): start over from the
  // last seq it holds.
  resync() {
    this.teardown();
    this.open();
  }

  reconnectNow() {
    if (this.closed || this.ready || !this.timer) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.open();
  }

  send(frame) {
    if (this.transport !== "ws" || !this.ready || !this.socket) return false;
    if (this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  // A binary frame (speech audio), on the WebSocket only.
  sendBinary(buffer) {
    if (this.transport !== "ws" || !this.ready || !this.socket) return false;
    if (this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(buffer);
    return true;
  }

  // For tests: drop the live connection as a network failure would.
  drop() {
    if (this.socket) {
      this.socket.close();
    } else if (this.source) {
      this.teardown();
      this.scheduleReconnect();
    }
  }

  // Switch the audio option of an SSE stream (it is part of the URL).
  refreshSse() {
    if (this.transport === "sse" && !this.closed) this.resync();
  }

  // --- internals ---

  status(state, extra = {}) {
    this.h.status({ state, transport: this.transport, fellBack: this.fellBack, ...extra });
  }

  open() {
    this.timer = null;
    if (this.closed) return;
    this.ready = false;
    this.status(this.connects ? "reconnecting" : "connecting");
    if (this.transport === "ws") this.openWs();
    else this.openSse();
  }

  teardown() {
    clearTimeout(this.timer);
    this.timer = null;
    this.stopHeartbeat();
    this.ready = false;
    const { socket, source } = this;
    this.socket = null;
    this.source = null;
    if (socket) socket.close();
    if (source) source.close();
  }

  gotHello(event, conn) {
    this.ready = true;
    this.everHello = true;
    this.wsFailures = 0;
    this.backoff.reset();
    this.connects += 1;
    this.status("open");
    this.h.hello(event, conn);
  }

  scheduleReconnect(delay) {
    if (this.closed) return;
    const wait = delay ?? this.backoff.next();
    this.status("reconnecting", { retryIn: wait });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), wait);
  }

  fatal(code) {
    this.closed = true;
    this.teardown();
    this.status("closed", { detail: FATAL_CLOSES[code], code });
  }

  openWs() {
    const after = this.h.after();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = after === null ? "" : `?after=${after}`;
    const url = `${scheme}//${location.host}/ws/rooms/${encodeURIComponent(this.slug)}/${query}`;
    const conn = ++this.conn;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.wsFailed();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    let hello = false;
    const helloTimer = setTimeout(() => {
      if (!hello && ws === this.socket) ws.close();
    }, HELLO_TIMEOUT_MS);
    ws.onmessage = (e) => {
      if (ws !== this.socket) return;
      if (typeof e.data !== "string") {
        this.h.binary(e.data);
        return;
      }
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        return;
      }
      if (event.type === "hello") {
        hello = true;
        clearTimeout(helloTimer);
        this.startHeartbeat(ws);
        this.gotHello(event, conn);
        return;
      }
      if (event.type === "pong") this.awaitingPong = null;
      this.h.event(event, conn);
    };
    ws.onclose = (e) => {
      clearTimeout(helloTimer);
      if (ws !== this.socket) return;
      this.socket = null;
      this.ready = false;
      this.stopHeartbeat();
      if (FATAL_CLOSES[e.code]) {
        this.fatal(e.code);
      } else if (!hello) {
        this.wsFailed();
      } else {
        // 4408: we read too slowly and fell behind; come straight back for the rest.
        this.scheduleReconnect(e.code === 4408 ? 0 : undefined);
      }
    };
  }

  wsFailed() {
    this.socket = null;
    this.wsFailures += 1;
    if (this.mode === "auto" && !this.everHello && this.wsFailures >= WS_FAILURES_BEFORE_SSE) {
      this.transport = "sse";
      this.fellBack = true;
      this.backoff.reset();
      this.open();
      return;
    }
    this.scheduleReconnect();
  }

  startHeartbeat(ws) {
    this.stopHeartbeat();
    let n = 0;
    this.awaitingPong = null;
    this.heartbeat = setInterval(() => {
      if (ws !== this.socket) return;
      if (this.awaitingPong && Date.now() - this.awaitingPong > PONG_WITHIN_MS) {
        ws.close(); // dead: onclose reconnects
        return;
      }
      if (!this.awaitingPong) {
        this.awaitingPong = Date.now();
        n += 1;
        ws.send(JSON.stringify({ action: "ping", id: `hb-${n}` }));
      }
    }, PING_EVERY_MS / 2);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.awaitingPong = null;
  }

  openSse() {
    const params = new URLSearchParams();
    const after = this.h.after();
    if (after !== null) params.set("after", String(after));
    if (this.h.audio()) params.set("audio", "1");
    const conn = ++this.conn;
    const source = new EventSource(`/api/rooms/${encodeURIComponent(this.slug)}/events?${params}`);
    this.source = source;
    for (const type of SSE_EVENT_TYPES) {
      source.addEventListener(type, (e) => {
        if (source !== this.source) return;
        let event;
        try {
          event = JSON.parse(e.data);
        } catch {
          return;
        }
        if (!event.type) event.type = type;
        if (type === "hello") this.gotHello(event, conn);
        else this.h.event(event, conn);
      });
    }
    source.onerror = () => {
      if (source !== this.source) return;
      this.ready = false;
      if (source.readyState === EventSource.CLOSED) {
        // The server refused (an HTTP error): the browser will not retry; we do.
        this.source = null;
        source.close();
        this.scheduleReconnect();
      } else {
        // The browser retries by itself and sends Last-Event-ID, which the server honours.
        this.status("reconnecting");
      }
    };
  }
}

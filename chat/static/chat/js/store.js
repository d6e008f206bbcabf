// The room's conversation as the client knows it: no DOM, no network.
//
// Durable events (those with a seq) are applied once each, in order: an event at or below
// the last seq is a duplicate and is dropped; one that skips a seq reports a gap so the
// connection can resume from the last seq it holds. A `message` event replaces the whole
// message (a replay rebuilds a reply from its empty start), `delta` appends, `generation`
// sets the status, `snapshot` replaces everything.

export const LIVE = new Set(["queued", "streaming", "paused"]);

export class RoomStore {
  constructor(me) {
    this.me = me;
    this.messages = new Map(); // id -> message, in display order
    this.pending = new Map(); // client_id -> optimistic message of ours not yet confirmed
    this.lastSeq = null;
  }

  load(messages, head) {
    this.messages.clear();
    for (const m of messages) this.messages.set(m.id, { ...m });
    if (head !== undefined) this.lastSeq = head;
  }

  get(id) {
    return this.messages.get(id);
  }

  hasLiveReply() {
    for (const m of this.messages.values()) if (m.role === "assistant" && LIVE.has(m.status)) return true;
    return false;
  }

  // What happened, for the view: {kind: "duplicate"|"gap"|"message"|"delta"|"generation"|"snapshot", ...}
  apply(event) {
    if (this.lastSeq !== null && event.type !== "snapshot") {
      if (event.seq <= this.lastSeq) return { kind: "duplicate" };
      if (event.seq > this.lastSeq + 1) return { kind: "gap" };
    }
    this.lastSeq = event.seq;
    switch (event.type) {
      case "message":
        return this.upsert(event.message);
      case "delta": {
        const m = this.messages.get(event.message_id);
        if (!m) return { kind: "delta", id: event.message_id, missing: true };
        m.text += event.text;
        if (m.status === "queued") m.status = "streaming";
        return { kind: "delta", id: m.id };
      }
      case "generation": {
        const m = this.messages.get(event.message_id);
        if (!m) return { kind: "generation", id: event.message_id, missing: true };
        m.status = event.state;
        m.by = event.by;
        m.reason = event.reason;
        if (event.metrics) m.metrics = event.metrics;
        return { kind: "generation", id: m.id, state: event.state, by: event.by };
      }
      case "snapshot":
        this.load(event.messages);
        for (const m of event.messages) if (m.client_id) this.pending.delete(m.client_id);
        return { kind: "snapshot" };
      default:
        return { kind: "unknown" };
    }
  }

  // A message from a `message` event: replace it whole, and retire our optimistic copy.
  // From an HTTP response (`keep`), a message already known is left as it is: the event
  // stream may have delivered it, and text after it, first.
  upsert(message, { keep = false } = {}) {
    const known = this.messages.has(message.id);
    if (!(known && keep)) this.messages.set(message.id, { ...message, reason: null });
    let confirmed = null;
    if (message.client_id && message.author === this.me && this.pending.has(message.client_id)) {
      confirmed = message.client_id;
      this.pending.delete(message.client_id);
    }
    return { kind: "message", id: message.id, isNew: !known, confirmed };
  }

  addPending(text) {
    const clientId = `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    const pending = {
      client_id: clientId,
      text,
      author: this.me,
      role: "user",
      created: new Date().toISOString(),
      status: "sending",
      conn: null, // the connection number it was sent on
      error: null,
    };
    this.pending.set(clientId, pending);
    return pending;
  }

  // Who may pause, resume or stop a reply: its asker, the room owner, staff.
  canControl(reply, { owner, isStaff }) {
    if (isStaff || owner === this.me) return true;
    const asked = reply.reply_to ? this.messages.get(reply.reply_to) : null;
    return Boolean(asked && asked.author === this.me);
  }
}

// The room's conversation as the client knows it: no DOM, no network.
//
// Durable events (those with a seq) are applied once each, in order: an event at or below
// the last seq is a duplicate and is dropped; one that skips a seq reports a gap so the
// connection can resume from the last seq it holds. A `message` event replaces the whole
// message (a replay rebuilds a reply from its empty start), `delta` appends, `generation`
// sets the status, `snapshot` replaces the latest messages, `room` carries the room's new
// settings and assistants for the view. `edit`, `delete` and `rating` (extensions) set a
// message's text and `edited`, make it a tombstone (`deleted`, no text), set its counts.
//
// The conversation is kept in id order, whatever order its messages arrive in: the first
// page, an older page as the reader scrolls up, a replay, a live event, a snapshot.
// Message ids are increasing integers sent as strings (docs/protocol.md "Objects").

export const LIVE = new Set(["queued", "streaming", "paused"]);

// Two ids compared as the integers they are: a longer string of digits is the larger
// number, and among equal lengths the string order is the number order. (Number() would
// do for the ids of today; this is exact at any length.)
export function compareIds(a, b) {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

export class RoomStore {
  constructor(me) {
    this.me = me;
    this.messages = new Map(); // id -> message, in id order (see put)
    this.pending = new Map(); // client_id -> optimistic message of ours not yet confirmed
    this.lastSeq = null;
    // Reading a stretch of history away from the live end (a search result's
    // surroundings): the id of the newest message of that stretch. Live messages newer
    // than it are not kept (there is a gap before them); the page pages down, or jumps to
    // the latest, to join the live end again (room.js goLive).
    this.detachedAt = null;
  }

  // A stretch of history around a message (GET .../messages?around=). Messages we hold
  // keep our copy (the live one is exact; a page's is its last save). `hasNewer`: more
  // follows it, so the conversation is detached from the live end; otherwise the
  // messages we hold after it are kept, since nothing is missing between them.
  loadWindow(messages, hasNewer) {
    const old = this.messages;
    this.messages = new Map();
    for (const m of messages) this.messages.set(m.id, old.get(m.id) || { ...m });
    const newest = messages.length ? messages[messages.length - 1].id : undefined;
    if (!hasNewer && newest !== undefined) {
      for (const [id, m] of old) if (compareIds(id, newest) > 0) this.messages.set(id, m);
    }
    this.detachedAt = hasNewer ? newest : null;
  }

  // Newer messages of a detached stretch (GET .../messages?after=), in their place.
  addNewer(messages) {
    const added = [];
    for (const m of messages) {
      if (this.messages.has(m.id)) continue;
      this.messages.set(m.id, { ...m });
      added.push(m.id);
    }
    if (messages.length) this.detachedAt = messages[messages.length - 1].id;
    return added;
  }

  load(messages, head) {
    this.messages.clear();
    for (const m of messages) this.put({ ...m });
    if (head !== undefined) this.lastSeq = head;
  }

  // Sets a message in its place by id. Newer than all we hold (the usual case) is an
  // append; anything else puts the map back in order.
  put(message) {
    if (message.deleted) message.text = ""; // a tombstone carries no text
    const known = this.messages.has(message.id);
    const newest = this.newestId();
    this.messages.set(message.id, message);
    if (!known && newest !== undefined && compareIds(message.id, newest) < 0) this.sort();
  }

  sort() {
    this.messages = new Map([...this.messages.entries()].sort(([a], [b]) => compareIds(a, b)));
  }

  get(id) {
    return this.messages.get(id);
  }

  oldestId() {
    for (const id of this.messages.keys()) return id;
    return undefined;
  }

  newestId() {
    let last;
    for (const id of this.messages.keys()) last = id;
    return last;
  }

  // The ids that follow `id` in the conversation, nearest first.
  *idsAfter(id) {
    for (const other of this.messages.keys()) if (compareIds(other, id) > 0) yield other;
  }

  // Older messages, from GET .../messages?before=: each goes in its place; one already
  // known is left as it is (an event may have brought it, and text after it, first).
  // Returns the ids added.
  addOlder(messages) {
    const added = [];
    const fresh = [];
    for (const m of messages) {
      if (this.messages.has(m.id)) continue;
      fresh.push([m.id, { ...m }]);
      added.push(m.id);
    }
    if (!added.length) return added;
    const oldest = this.oldestId();
    const sorted = fresh.every(([id], i) => i === 0 || compareIds(fresh[i - 1][0], id) < 0);
    if (sorted && (oldest === undefined || compareIds(fresh[fresh.length - 1][0], oldest) < 0)) {
      // The usual case, a page just before all we hold: put in front, no sort (a long
      // room scrolled to its start costs a copy per page, not a sort per page).
      this.messages = new Map([...fresh, ...this.messages]);
    } else {
      for (const [id, m] of fresh) this.messages.set(id, m);
      this.sort(); // once for the page, not once per message
    }
    return added;
  }

  // What happened, for the view: {kind: "duplicate"|"gap"|"message"|"beyond"|"delta"|"generation"|"snapshot"|"room", ...}
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
      case "snapshot": {
        this.detachedAt = null; // the latest messages: joined to the live end again
        // The room's latest messages: they replace ours from the first of them on. Older
        // ones we hold are kept if the snapshot starts at a message we know (nothing can
        // be missing between the two); otherwise the conversation starts again from it.
        const first = event.messages[0];
        const keptOlder = Boolean(first && this.messages.has(first.id));
        if (keptOlder) {
          for (const id of [...this.messages.keys()]) if (compareIds(id, first.id) >= 0) this.messages.delete(id);
          for (const m of event.messages) this.put({ ...m });
        } else {
          this.load(event.messages);
        }
        for (const m of event.messages) if (m.client_id) this.pending.delete(m.client_id);
        return { kind: "snapshot", keptOlder };
      }
      case "version": {
        // Extension (docs/protocol.md "Versions of a reply"): the reply's count of
        // versions and which is current; versions.js shows it.
        const m = this.messages.get(event.message_id);
        if (!m) return { kind: "version", id: event.message_id, missing: true };
        m.version = 1;
        m.versions = event.versions;
        m.current = event.current;
        return { kind: "version", id: m.id, current: event.current, by: event.by };
      }
      case "edit":
      case "delete":
      case "rating": {
        const m = this.messages.get(event.message_id);
        if (!m) return { kind: "lifecycle", id: event.message_id, missing: true };
        if (event.type === "delete") {
          m.deleted = true;
          m.text = "";
        } else if (event.type === "edit" && !m.deleted) {
          m.text = event.text;
          m.edited = true;
        } else if (event.type === "rating") {
          m.rating = { up: event.up, down: event.down };
        }
        return { kind: "lifecycle", id: m.id, type: event.type, by: event.by };
      }
      case "room":
        // The room's settings or assistants changed (docs/protocol.md "room"): durable,
        // so it takes its seq like the others; the view shows the new room.
        return { kind: "room", room: event.room };
      default:
        return { kind: "unknown" };
    }
  }

  // A message from a `message` event: replace it whole, and retire our optimistic copy.
  // From an HTTP response (`keep`), a message already known is left as it is: the event
  // stream may have delivered it, and text after it, first.
  upsert(message, { keep = false } = {}) {
    const known = this.messages.has(message.id);
    if (!known && this.detachedAt !== null && compareIds(message.id, this.detachedAt) > 0) {
      return { kind: "beyond", id: message.id }; // past the gap after a detached stretch
    }
    // An ended reply says how it ended (by, reason, metrics); a new one says nothing yet.
    if (!(known && keep)) this.put({ by: null, reason: null, metrics: null, ...message });
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

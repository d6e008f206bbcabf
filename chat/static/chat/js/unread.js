// Unread and mentions (docs/protocol.md "Unread and mentions"): the home page's badges,
// and on the room page the "new" divider, the read mark sent back, and a browser
// notification for a mention while the tab is hidden (only once the user asked for it).

// The page tells the server how far it has read at most this often: the mark moves on
// once the reader has seen the end for a moment, not once per event.
export const READ_DEBOUNCE_MS = 1500;

// The home page's badge of a room: its unread count ("99+" past 99) and "@" when the
// reader was mentioned. `badge` is the room card's .unread element.
export function paintBadge(badge, count, mentioned) {
  badge.hidden = !count;
  badge.dataset.unread = String(count);
  badge.dataset.mentioned = String(Boolean(mentioned));
  const shown = count > 99 ? "99+" : String(count);
  badge.textContent = mentioned ? `@ ${shown}` : shown;
  badge.setAttribute("aria-label", `${count} unread${mentioned ? ", you were mentioned" : ""}`);
}

// Does `text` mention `@username` as a whole name (the server's rule, chat/unread.py)?
export function mentions(text, username) {
  const escaped = username.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const pattern = new RegExp(`(?<![\\w@.+-])@${escaped}(?![\\w@.+-]*\\w)`, "i");
  return pattern.test(text || "");
}

const NOTIFY_KEY = (slug) => `parley:notify:${slug}`;

export class UnreadTracker {
  // firstUnread: the id of the first message the reader has not read (or null);
  // lastReadSeq: the server's read mark; send(seq): tells the server.
  constructor({ me, slug, roomName, firstUnread, lastReadSeq, send }) {
    this.me = me;
    this.slug = slug;
    this.roomName = roomName;
    this.firstUnread = firstUnread;
    this.sent = lastReadSeq || 0;
    this.send = send;
    this.timer = null;
    this.wanted = 0;
    this.divider = document.createElement("div");
    this.divider.className = "unread-divider";
    this.divider.id = "unread-divider";
    this.divider.setAttribute("role", "separator");
    this.divider.textContent = "New";
  }

  // The divider goes before the first unread message while it is on the page; once the
  // reader has read on and the page reloads, the server names no first unread.
  placeDivider(elements) {
    const article = this.firstUnread ? elements.get(this.firstUnread) : null;
    if (article) article.before(this.divider);
    else this.divider.remove();
  }

  // The reader sees the end of the room up to `seq`: the mark moves there, debounced.
  seen(seq) {
    if (typeof seq !== "number" || seq <= this.sent || document.hidden) return;
    this.wanted = Math.max(this.wanted, seq);
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (document.hidden || this.wanted <= this.sent) return;
      const seqNow = this.wanted;
      if (this.send(seqNow) !== false) this.sent = seqNow;
      else this.seen(seqNow); // not connected yet: try again after the same pause
    }, READ_DEBOUNCE_MS);
  }

  // --- notifications of a mention, while the tab is hidden ---

  get notifyOn() {
    try {
      return localStorage.getItem(NOTIFY_KEY(this.slug)) === "on";
    } catch {
      return false;
    }
  }

  // The "Notify me" toggle: asking the browser's permission happens here, on the click,
  // never on load.
  wireToggle(button) {
    if (!button) return;
    if (!("Notification" in window)) {
      button.hidden = true;
      return;
    }
    const paint = () => {
      const on = this.notifyOn && Notification.permission === "granted";
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "Notifying you of mentions" : "Notify me of mentions";
    };
    button.addEventListener("click", async () => {
      if (this.notifyOn) {
        localStorage.setItem(NOTIFY_KEY(this.slug), "off");
      } else {
        const permission = Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission;
        try {
          localStorage.setItem(NOTIFY_KEY(this.slug), permission === "granted" ? "on" : "off");
        } catch {
          // private mode: nothing kept
        }
      }
      paint();
    });
    paint();
  }

  // A new message arrived live: a notification if it mentions the reader, the tab is
  // hidden, and they asked for them.
  onMessage(m) {
    if (!document.hidden || m.role !== "user" || m.author === this.me) return;
    if (!this.notifyOn || !("Notification" in window) || Notification.permission !== "granted") return;
    if (!mentions(m.text, this.me)) return;
    const note = new Notification(`${m.author} mentioned you in ${this.roomName}`, {
      body: (m.text || "").slice(0, 160),
      tag: `parley-${this.slug}-${m.id}`,
    });
    note.onclick = () => {
      window.focus();
      note.close();
    };
  }
}

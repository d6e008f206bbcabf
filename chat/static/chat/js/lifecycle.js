// Edit, delete and rate messages on the room page (docs/protocol.md "Editing, deleting
// and rating messages"). room.js calls `render` after it renders a message, `onClick`
// for clicks in the list, and re-renders a message on its `edit`, `delete` or `rating`
// event (store.js applies them).
//
// - A member's own message: Edit (an inline box, Save / Cancel) and Delete (after a
//   confirm). The room's owners and staff may delete any message, replies too.
// - A deleted message is a tombstone for everyone: "message deleted", no text, no buttons.
// - An edited message says "edited" beside its time.
// - A reply that has ended: up / down with the room's counts, and an optional
//   comment once rated. What this page last sent is shown pressed; pressing it again
//   clears the rating.

import { ApiError, messages as messagesApi } from "./api.js";
import { LIVE } from "./store.js";

// The server's bound for a rating's comment (PARLEY_RATING_COMMENT_MAX).
const COMMENT_MAX = 500;

export class Lifecycle {
  // `send(frame)`: over the WebSocket, false when it is not open (then HTTP is used);
  // `onError(detail)`: show a refusal; `canManage`: this member may delete any message.
  constructor({ me, canManage, maxChars, send, onError }) {
    this.me = me;
    this.canManage = canManage;
    this.maxChars = maxChars;
    this.send = send;
    this.onError = onError;
    this.mine = new Map(); // reply id -> the value this page last rated it (1 / -1)
    this.editing = new Set(); // ids of messages whose edit box is open
    this.requests = 0;
  }

  render(article, m) {
    const main = article.querySelector(".msg__main");
    article.classList.toggle("msg--deleted", Boolean(m.deleted));
    article.querySelector(".msg__edited")?.remove();
    if (m.edited && !m.deleted) {
      const mark = document.createElement("span");
      mark.className = "msg__edited";
      mark.textContent = "edited";
      article.querySelector(".msg__time").after(mark);
    }
    if (m.deleted) {
      this.editing.delete(m.id);
      const body = article.querySelector(".msg__body");
      body.textContent = "";
      const tomb = document.createElement("p");
      tomb.className = "msg__tombstone";
      tomb.textContent = "message deleted";
      body.append(tomb);
      for (const gone of article.querySelectorAll(".msg__controls, .msg__note, .msg__life, .msg__edit")) {
        gone.hidden = true;
      }
      return;
    }
    let life = main.querySelector(".msg__life");
    if (!life) {
      life = document.createElement("div");
      life.className = "msg__life";
      main.append(life);
    }
    life.hidden = false;
    life.textContent = "";
    const own = m.role === "user" && m.author === this.me;
    if (m.role === "assistant" && !LIVE.has(m.status)) life.append(...this.ratingButtons(m));
    if (own && !this.editing.has(m.id)) life.append(button("Edit", "edit", "Edit your message"));
    if (own || this.canManage) life.append(button("Delete", "delete", "Delete this message"));
    if (this.editing.has(m.id)) this.showEditor(article, m);
  }

  ratingButtons(m) {
    const counts = m.rating || { up: 0, down: 0 };
    const mine = this.mine.get(m.id);
    // Triangles, not thumbs emoji: every system font has them.
    const up = button(`▲ ${counts.up}`, "rate-up", "Good answer");
    const down = button(`▼ ${counts.down}`, "rate-down", "Bad answer");
    up.setAttribute("aria-label", `Good answer (${counts.up})`);
    down.setAttribute("aria-label", `Bad answer (${counts.down})`);
    up.setAttribute("aria-pressed", String(mine === 1));
    down.setAttribute("aria-pressed", String(mine === -1));
    up.dataset.count = String(counts.up);
    down.dataset.count = String(counts.down);
    const parts = [up, down];
    if (mine) parts.push(button("Comment", "comment", "Say why (optional)"));
    return parts;
  }

  // A click in the message list: true when it was one of ours.
  onClick(event, article, m) {
    const target = event.target.closest("button[data-life]");
    if (!target || !m) return false;
    switch (target.dataset.life) {
      case "edit":
        this.editing.add(m.id);
        this.render(article, m);
        article.querySelector(".msg__edit textarea")?.focus();
        return true;
      case "edit-cancel":
        this.closeEditor(article, m);
        return true;
      case "edit-save": {
        const text = article.querySelector(".msg__edit textarea").value;
        this.act({ action: "edit", message_id: m.id, text, rerun: false }, () =>
          messagesApi.edit(m.id, text),
        );
        this.closeEditor(article, m);
        return true;
      }
      case "delete":
        // eslint-disable-next-line no-alert -- the plainest confirm there is
        if (window.confirm("Delete this message for everyone?")) {
          this.act({ action: "delete", message_id: m.id }, () => messagesApi.remove(m.id));
        }
        return true;
      case "rate-up":
      case "rate-down": {
        const value = target.dataset.life === "rate-up" ? 1 : -1;
        const next = this.mine.get(m.id) === value ? 0 : value;
        if (next) this.mine.set(m.id, next);
        else this.mine.delete(m.id);
        this.act({ action: "rate", message_id: m.id, value: next }, () => messagesApi.rate(m.id, next));
        this.render(article, m);
        return true;
      }
      case "comment": {
        const value = this.mine.get(m.id);
        // eslint-disable-next-line no-alert -- an optional line of text
        const comment = window.prompt("Why? (optional, up to 500 characters)", "");
        if (value && comment !== null) {
          const text = comment.slice(0, COMMENT_MAX);
          this.act({ action: "rate", message_id: m.id, value, comment: text }, () =>
            messagesApi.rate(m.id, value, text),
          );
        }
        return true;
      }
      default:
        return false;
    }
  }

  showEditor(article, m) {
    const body = article.querySelector(".msg__body");
    body.hidden = true;
    let editor = article.querySelector(".msg__edit");
    if (editor) return;
    editor = document.createElement("div");
    editor.className = "msg__edit";
    const box = document.createElement("textarea");
    box.value = m.text;
    box.maxLength = this.maxChars;
    box.rows = Math.min(8, Math.max(2, m.text.split("\n").length));
    box.setAttribute("aria-label", "Edit your message");
    const save = button("Save", "edit-save", "Save the edit");
    save.classList.remove("btn--ghost");
    editor.append(box, save, button("Cancel", "edit-cancel", "Keep the message as it is"));
    body.after(editor);
  }

  closeEditor(article, m) {
    this.editing.delete(m.id);
    article.querySelector(".msg__edit")?.remove();
    article.querySelector(".msg__body").hidden = false;
    this.render(article, m);
  }

  // Over the WebSocket when it is open (the room's event is the answer), else over HTTP.
  act(frame, overHttp) {
    this.requests += 1;
    if (this.send({ ...frame, id: `life-${this.requests}` })) return;
    overHttp().catch((err) => this.onError(err instanceof ApiError ? err.detail : String(err)));
  }
}

function button(label, action, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `btn btn--ghost btn--small msg__${action}`;
  b.dataset.life = action;
  b.textContent = label;
  b.title = title;
  return b;
}

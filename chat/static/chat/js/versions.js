// Versions of a reply (docs/protocol.md "Versions of a reply"): a regenerated answer is a
// message of its own (`version_of`: the reply, `version`: its number) shown inside the
// reply's article, not as an article of its own. The reply (version 1) says how many
// versions there are and which is `current`; the page shows the current one unless the
// reader pages to another (`< 2/3 >`, a local view), and the asker (or an owner, staff)
// can make the one they look at current ("Use this version": `pick_version`).

// The id of the reply a message's article belongs to: its own, or the reply it is a
// later version of.
export function groupOf(m) {
  return m && m.version_of ? m.version_of : m ? m.id : undefined;
}

// The versions of reply `head` the store holds, first to last.
export function versionsOf(store, head) {
  const found = [head];
  for (const m of store.messages.values()) if (m.version_of === head.id) found.push(m);
  return found.sort((a, b) => (a.version || 1) - (b.version || 1));
}

export class VersionView {
  constructor() {
    this.viewing = new Map(); // reply id -> the version id the reader paged to
  }

  // The version the reply's article shows: the one paged to, else the current one.
  shown(store, head) {
    const wanted = this.viewing.get(head.id) || head.current || head.id;
    return store.get(wanted) || head;
  }

  // A new version started, or one was picked: show the current one again.
  follow(headId) {
    this.viewing.delete(headId);
  }

  page(store, head, step) {
    const all = versionsOf(store, head);
    const at = all.findIndex((m) => m.id === this.shown(store, head).id);
    const next = all[Math.min(all.length - 1, Math.max(0, at + step))];
    if (next) this.viewing.set(head.id, next.id);
  }
}

// The pager and the version buttons under a reply: `< 2/3 >`, "Use this version" (when
// the reader looks at another than the current one and may pick), "Regenerate" (when no
// version is being written and the reader may ask). Made once per article, updated after.
export function renderVersions(article, { head, shown, versions, allowed, live }) {
  let bar = article.querySelector(".msg__versions");
  if (!bar) {
    bar = document.createElement("div");
    bar.className = "msg__versions";
    bar.setAttribute("role", "group");
    bar.setAttribute("aria-label", "Versions of this reply");
    const prev = button("version-prev", "‹", "Previous version");
    const label = document.createElement("span");
    label.className = "msg__version-label";
    const next = button("version-next", "›", "Next version");
    const pick = button("version-pick", "Use this version");
    const regen = button("regenerate", "Regenerate", "Ask for another answer");
    bar.append(prev, label, next, pick, regen);
    article.querySelector(".msg__main").append(bar);
  }
  const count = Math.max(head.versions || 1, versions.length);
  const number = shown.version || 1;
  const paged = count > 1;
  const at = versions.findIndex((m) => m.id === shown.id);
  for (const el of bar.querySelectorAll(".btn--version-prev, .btn--version-next, .msg__version-label")) el.hidden = !paged;
  bar.querySelector(".msg__version-label").textContent = paged ? `${number}/${count}` : "";
  bar.querySelector(".btn--version-prev").disabled = at <= 0;
  bar.querySelector(".btn--version-next").disabled = at < 0 || at >= versions.length - 1;
  bar.querySelector(".btn--version-pick").hidden = !(paged && allowed && shown.id !== (head.current || head.id));
  const regen = bar.querySelector(".btn--regenerate");
  regen.hidden = !allowed || live;
  bar.hidden = !paged && regen.hidden;
}

function button(kind, text, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `btn btn--small btn--ghost btn--${kind}`;
  b.dataset.version = kind;
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  return b;
}

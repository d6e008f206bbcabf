// `@` completion in the composer: typing `@` offers the room's assistants and members,
// filtered by what follows it; Up/Down move, Enter or Tab pick, Escape closes, and a
// click picks too. The textarea keeps focus throughout; the list is a listbox whose
// active option the textarea names (aria-activedescendant), as the WAI-ARIA combobox
// pattern does for an editable field.

import { paintAvatar, hue } from "./assistants.js";

// The `@word` being typed: an `@` at the start or after a space, up to the caret.
const TYPED = /(^|\s)@([\w.-]*)$/u;
// Options shown at most (a crowd's member list would otherwise fill the screen).
const SHOWN_MAX = 8;

export class MentionCompleter {
  // candidates(): [{kind: "assistant"|"member", handle, name, avatar}] (name: a member's
  // is their username).
  constructor({ input, list, candidates }) {
    this.input = input;
    this.list = list;
    this.candidates = candidates;
    this.options = [];
    this.active = -1;
    this.start = -1; // where the `@` is in the text
  }

  get open() {
    return !this.list.hidden;
  }

  wire() {
    this.input.setAttribute("aria-autocomplete", "list");
    this.input.setAttribute("aria-controls", this.list.id);
    this.input.addEventListener("input", () => this.update());
    this.input.addEventListener("click", () => this.update());
    this.input.addEventListener("blur", () => this.close());
    // mousedown would take the focus from the textarea (and close the list) before the click.
    this.list.addEventListener("mousedown", (e) => e.preventDefault());
    this.list.addEventListener("click", (e) => {
      const option = e.target.closest("[role=option]");
      if (option) this.pick(Number(option.dataset.index));
    });
  }

  // Reads what is typed before the caret; opens, refreshes or closes the list.
  update() {
    const caret = this.input.selectionStart;
    if (caret !== this.input.selectionEnd) return this.close();
    const found = TYPED.exec(this.input.value.slice(0, caret));
    if (!found) return this.close();
    const query = found[2].toLowerCase();
    this.start = caret - found[2].length - 1;
    const seen = new Set();
    const matches = [];
    for (const c of this.candidates()) {
      if (seen.has(c.handle)) continue;
      seen.add(c.handle);
      const handle = c.handle.toLowerCase();
      const name = (c.name || "").toLowerCase();
      if (handle === query) matches.push([-1, c]);
      else if (handle.startsWith(query)) matches.push([0, c]);
      else if (query && (handle.includes(query) || name.includes(query))) matches.push([1, c]);
    }
    // The exact handle, then prefix matches, then the rest; assistants before members,
    // each kept in their order.
    matches.sort((a, b) => a[0] - b[0] || (a[1].kind === b[1].kind ? 0 : a[1].kind === "assistant" ? -1 : 1));
    this.options = matches.slice(0, SHOWN_MAX).map(([, c]) => c);
    // A handle typed out in full, with nothing longer to offer: nothing to complete, and
    // Enter sends as it would without the list.
    if (!this.options.length || (matches.length === 1 && matches[0][0] === -1)) return this.close();
    this.active = 0;
    this.render();
  }

  render() {
    this.list.replaceChildren();
    this.options.forEach((c, i) => {
      const li = document.createElement("li");
      li.id = `${this.list.id}-${i}`;
      li.className = "mention__option";
      li.setAttribute("role", "option");
      li.dataset.index = String(i);
      li.dataset.handle = c.handle;
      li.setAttribute("aria-selected", String(i === this.active));
      const avatar = document.createElement("span");
      avatar.className = "mention__avatar";
      avatar.setAttribute("aria-hidden", "true");
      if (c.kind === "assistant") {
        paintAvatar(avatar, c);
      } else {
        avatar.textContent = c.handle.slice(0, 1).toUpperCase();
        avatar.style.setProperty("--hue", hue(c.handle));
      }
      const handle = document.createElement("span");
      handle.className = "mention__handle";
      handle.textContent = `@${c.handle}`;
      const name = document.createElement("span");
      name.className = "mention__name";
      name.textContent = c.kind === "assistant" ? c.name : c.online ? "member · here" : "member";
      li.append(avatar, handle, name);
      this.list.append(li);
    });
    this.list.hidden = false;
    this.input.setAttribute("aria-activedescendant", `${this.list.id}-${this.active}`);
  }

  move(by) {
    const n = this.options.length;
    this.active = (this.active + by + n) % n;
    for (const li of this.list.children) {
      li.setAttribute("aria-selected", String(Number(li.dataset.index) === this.active));
    }
    this.list.children[this.active].scrollIntoView({ block: "nearest" });
    this.input.setAttribute("aria-activedescendant", `${this.list.id}-${this.active}`);
  }

  // Replaces the typed `@word` with the picked handle and a space.
  pick(index) {
    const chosen = this.options[index];
    if (!chosen) return;
    const { value } = this.input;
    const caret = this.input.selectionStart;
    const inserted = `@${chosen.handle} `;
    this.input.value = value.slice(0, this.start) + inserted + value.slice(caret);
    const at = this.start + inserted.length;
    this.input.setSelectionRange(at, at);
    this.close();
    this.input.dispatchEvent(new Event("input", { bubbles: true }));
  }

  close() {
    if (this.list.hidden) return;
    this.list.hidden = true;
    this.list.replaceChildren();
    this.options = [];
    this.active = -1;
    this.input.removeAttribute("aria-activedescendant");
  }

  // The composer's keydown goes here first: true when the list used the key.
  onKeydown(e) {
    if (!this.open || e.isComposing) return false;
    switch (e.key) {
      case "ArrowDown":
        this.move(1);
        break;
      case "ArrowUp":
        this.move(-1);
        break;
      case "Enter":
      case "Tab":
        if (e.shiftKey) return false;
        this.pick(this.active);
        break;
      case "Escape":
        this.close();
        break;
      default:
        return false;
    }
    e.preventDefault();
    return true;
  }
}

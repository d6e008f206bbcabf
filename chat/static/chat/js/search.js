// The room's search box (docs/protocol.md "Search"): results newest first, paged with
// "More results"; choosing one jumps to the message (room.js loads history around it).
// Snippets are plain text with highlight offsets, built with text nodes: never HTML.

import { ApiError, rooms } from "./api.js";

function snippetNode(hit) {
  const span = document.createElement("span");
  span.className = "search__snippet";
  let at = 0;
  const text = hit.snippet || "";
  for (const [start, end] of hit.highlights || []) {
    if (start < at || end > text.length) continue;
    span.append(text.slice(at, start));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(start, end);
    span.append(mark);
    at = end;
  }
  span.append(text.slice(at));
  return span;
}

export function wireSearch({ slug, form, input, results, onJump, formatTime }) {
  let query = "";
  let last = null; // the id of the last hit shown, for the next page
  let busy = false;

  const close = () => {
    results.hidden = true;
    results.replaceChildren();
    input.setAttribute("aria-expanded", "false");
  };

  const note = (text) => {
    const li = document.createElement("li");
    li.className = "search__note";
    li.textContent = text;
    results.append(li);
  };

  async function fetchPage(more) {
    if (busy) return;
    busy = true;
    results.querySelector(".search__more")?.remove();
    let page;
    try {
      page = await rooms.search(slug, { q: query, before: more ? last : undefined });
    } catch (err) {
      note(err instanceof ApiError ? err.detail : String(err));
      busy = false;
      return;
    }
    busy = false;
    if (!more) results.replaceChildren();
    results.hidden = false;
    input.setAttribute("aria-expanded", "true");
    if (!page.results.length && !more) note(`No messages match “${query}”.`);
    for (const hit of page.results) {
      const m = hit.message;
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "search__hit";
      button.dataset.id = m.id;
      const meta = document.createElement("span");
      meta.className = "search__meta";
      meta.textContent = `${m.author || "unknown"} · ${formatTime(m.created)}`;
      button.append(meta, snippetNode(hit));
      button.addEventListener("click", () => {
        close();
        onJump(m.id);
      });
      li.append(button);
      results.append(li);
      last = m.id;
    }
    if (page.more) {
      const li = document.createElement("li");
      li.className = "search__more";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn--ghost btn--small";
      button.textContent = "More results";
      button.addEventListener("click", () => fetchPage(true));
      li.append(button);
      results.append(li);
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    query = input.value.trim();
    last = null;
    if (!query) {
      close();
      return;
    }
    fetchPage(false);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") close();
  });
  document.addEventListener("click", (e) => {
    if (!results.hidden && !form.contains(e.target)) close();
  });
}

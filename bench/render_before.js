// The renderer issue 19 replaced, for bench/render.py's "before" row only (never served
// by Parley): chat/static/chat/js/markdown.js as of 7ceb306, unchanged below the line,
// and at the end the same renderInto/renderStats hooks the new module has, doing what the
// page did then on every frame: the whole text through renderMarkdown into innerHTML,
// then a copy button into every <pre> (room.js renderBody as of 7ceb306).
// ---------------------------------------------------------------------------------------
// A small, safe markdown renderer for chat messages.
//
// Safety rule: every piece of the source is HTML-escaped before any tag is added, and the
// only tags added are our own fixed ones: p, br, em, strong, del, code, pre, ul, ol, li,
// blockquote, h3-h6 and a (http/https only, opened in a new tab without an opener).
// No attribute ever holds unescaped source text, so nothing a message says can run
// script. A fence left open (a reply still streaming) renders as a code block to the end.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const LIST_ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])\s+(.*)$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

// Inline tokens, tried left to right: code spans, [label](http(s) url), bare http(s) urls.
const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\[([^\]\n]+)\]\((https?:\/\/[^\s()<>]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"*_])/g;

function emphasis(escaped) {
  // Runs on already-escaped text with no tags in it; each rule wraps a whole match, so
  // the tags it adds are always balanced.
  return escaped
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/__(?=\S)([\s\S]*?\S)__(?!\w)/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^_\w])_(?=[^\s_])([^_]*?[^\s_])_(?![_\w])/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

function link(url, labelHtml) {
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer nofollow">${labelHtml}</a>`;
}

export function renderInline(text) {
  let html = "";
  let last = 0;
  for (const m of String(text).matchAll(INLINE)) {
    html += emphasis(escapeHtml(text.slice(last, m.index)));
    if (m[1] !== undefined) {
      html += `<code>${escapeHtml(m[2])}</code>`;
    } else if (m[3] !== undefined) {
      html += link(m[4], emphasis(escapeHtml(m[3])));
    } else {
      html += link(m[5], escapeHtml(m[5]));
    }
    last = m.index + m[0].length;
  }
  return html + emphasis(escapeHtml(text.slice(last)));
}

function inlineLines(lines) {
  return lines.map((line) => renderInline(line.trim())).join("<br>");
}

function isBlockStart(line) {
  return FENCE.test(line) || LIST_ITEM.test(line) || HEADING.test(line) || QUOTE.test(line) ||
    RULE.test(line);
}

function renderList(lines, start) {
  const first = LIST_ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const item = LIST_ITEM.exec(lines[i]);
    if (item && /\d/.test(item[2]) === ordered) {
      items.push([item[3]]);
      i += 1;
    } else if (lines[i].trim() && items.length && /^\s+\S/.test(lines[i]) && !FENCE.test(lines[i])) {
      items[items.length - 1].push(lines[i]); // an indented continuation of the item
      i += 1;
    } else {
      break;
    }
  }
  const body = items.map((item) => `<li>${inlineLines(item)}</li>`).join("");
  if (!ordered) return { html: `<ul>${body}</ul>`, next: i };
  const number = parseInt(first[2], 10);
  const startAttr = number !== 1 ? ` start="${number}"` : "";
  return { html: `<ol${startAttr}>${body}</ol>`, next: i };
}

export function renderMarkdown(source) {
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(marker) && !lines[i].trim().slice(marker.length).trim())) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end)
      const lang = fence[2] ? ` data-lang="${escapeHtml(fence[2])}"` : "";
      out.push(`<pre${lang}><code>${escapeHtml(body.join("\n"))}</code></pre>`);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(6, heading[1].length + 2);
      out.push(`<h${level}>${renderInline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (LIST_ITEM.test(line)) {
      const list = renderList(lines, i);
      out.push(list.html);
      i = list.next;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        quoted.push(QUOTE.exec(lines[i])[1]);
        i += 1;
      }
      out.push(`<blockquote>${renderMarkdown(quoted.join("\n"))}</blockquote>`);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) {
      para.push(lines[i]);
      i += 1;
    }
    out.push(`<p>${inlineLines(para)}</p>`);
  }
  return out.join("");
}

// --- the bench's hooks (as in the new markdown.js) -------------------------------------
export const renderStats = {
  renders: 0,
  totalMs: 0,
  maxMs: 0,
  blocksRendered: 0,
  fullRenders: 0,
  reset() {
    Object.assign(this, { renders: 0, totalMs: 0, maxMs: 0, blocksRendered: 0, fullRenders: 0 });
  },
};
globalThis.__parleyRenderStats = renderStats;

export function renderInto(element, text) {
  const start = performance.now();
  element.innerHTML = renderMarkdown(text);
  for (const pre of element.querySelectorAll("pre")) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    pre.prepend(copy);
  }
  const end = performance.now();
  const measure = performance.measure("parley:render", { start, end });
  performance.clearMeasures("parley:render");
  renderStats.renders += 1;
  renderStats.fullRenders += 1;
  renderStats.blocksRendered += element.childElementCount;
  renderStats.totalMs += measure.duration;
  renderStats.maxMs = Math.max(renderStats.maxMs, measure.duration);
}

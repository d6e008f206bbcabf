// Rendering a message's Markdown: markdown-it, DOMPurify, highlight.js and KaTeX, each a
// pinned vendored build (chat/static/chat/vendor/VENDORED.md).
//
// Safety, in layers:
// - markdown-it runs with raw HTML off, so `<tag>` in a message is text, and its link
//   check refuses javascript:, vbscript:, file: and data: URLs; images are off too (a
//   picture from anywhere would be a tracking pixel in a shared room).
// - Everything markdown-it makes goes through DOMPurify (HTML profile only: no SVG, no
//   MathML) before it reaches the page; a link keeps only an http(s), mailto or relative
//   URL and opens in a new tab without an opener or a referrer.
// - Math: markdown-it-texmath finds $...$ and $$...$$; we render its TeX with KaTeX into
//   an empty placeholder, after sanitizing, with `trust: false` (no \href, \url,
//   \htmlClass, \includegraphics...) and bounded macro expansion. KaTeX builds that DOM
//   itself and sets its sizes through element.style (CSSOM), which the pages' CSP
//   (style-src 'self', no inline style attributes) allows; its HTML string would not be.
//
// Streaming stays cheap (renderInto): a message's text is split into markdown-it's
// top-level blocks. Blocks are closed once a later block starts, so appended text can only
// change the last one: a render keeps the DOM of every earlier block and renders only from
// the last block's first line on. An unclosed ``` fence is a code block to the end.
//
// The page's timing hooks: every renderInto is a performance.measure ("parley:render"),
// summed in `renderStats` (window.__parleyRenderStats), which the render bench reads.

import hljs from "../vendor/highlight.js/highlight.min.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import katex from "../vendor/katex/katex.mjs";
import MarkdownIt from "../vendor/markdown-it/markdown-it.esm.min.mjs";

// The two plugins ship only as classic scripts (UMD / CommonJS-or-global); room.html loads
// them, deferred, before the page's modules.
const texmath = globalThis.texmath;
const taskLists = globalThis.markdownitTaskLists;

// KaTeX limits: a message is a stranger's input, so macro expansion and sizes are bounded
// (KaTeX's own default expansion limit is 1000; a \rule or \kern of 1000em would cover the page).
// throwOnError: a formula KaTeX cannot parse is shown as its source (renderMath): KaTeX's
// own error span sets its colour with setAttribute("style"), which the CSP refuses.
const KATEX = {
  throwOnError: true,
  trust: false,
  strict: "ignore",
  maxExpand: 1000,
  maxSize: 20,
  output: "htmlAndMathml",
};

// Code longer than this is shown without highlighting: highlight.js is linear but a
// 100 kB fence re-highlighted every frame while it streams would make the page stutter.
const HIGHLIGHT_MAX_CHARS = 20_000;

const md = new MarkdownIt({ html: false, linkify: true, breaks: true, typographer: false });
md.disable("image");
if (texmath) {
  // texmath parses; rendering goes to our own placeholders (see renderMath), so its
  // engine is never asked for HTML.
  md.use(texmath, { engine: { renderToString: () => "" }, delimiters: "dollars" });
  for (const rule of [...texmath.rules.dollars.inline, ...texmath.rules.dollars.block]) {
    const display = Boolean(rule.displayMode) || texmath.rules.dollars.block.includes(rule);
    md.renderer.rules[rule.name] = (tokens, idx) => {
      const tex = md.utils.escapeHtml(tokens[idx].content);
      return display
        ? `<div class="math math--display" data-tex="${tex}"></div>`
        : `<span class="math" data-tex="${tex}"></span>`;
    };
  }
}
if (taskLists) md.use(taskLists, { enabled: false, label: true });

// Two changes to what markdown-it makes. Table alignment comes out as
// style="text-align:..", an inline style the CSP refuses: it becomes a class. Headings
// start at h3 (# is h3, ## h4, the rest h5/h6): a message sits under the page's own.
const HEADING_TAG = { h1: "h3", h2: "h4", h3: "h5", h4: "h6", h5: "h6", h6: "h6" };
md.core.ruler.push("chat_markup", (state) => {
  for (const token of state.tokens) {
    if (token.type === "heading_open" || token.type === "heading_close") {
      token.tag = HEADING_TAG[token.tag];
    }
    const style = token.attrGet("style");
    if (!style) continue;
    const align = /^text-align:(left|right|center)$/.exec(style);
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    if (align) token.attrJoin("class", `align-${align[1]}`);
  }
});

// A fenced block: <pre data-lang="js"><code class="hljs language-js">...</code></pre>;
// the copy button is added in the DOM (decorate). Unknown languages are escaped text.
md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const lang = token.info.trim().split(/\s+/)[0].slice(0, 32);
  const known = lang && hljs.getLanguage(lang);
  // The code as written, without the newline before the closing fence (what Copy copies).
  const content = token.content.replace(/\n$/, "");
  const code =
    known && content.length <= HIGHLIGHT_MAX_CHARS
      ? hljs.highlight(content, { language: lang, ignoreIllegals: true }).value
      : md.utils.escapeHtml(content);
  const langAttr = lang ? ` data-lang="${md.utils.escapeHtml(lang)}"` : "";
  const cls = known ? ` class="hljs language-${md.utils.escapeHtml(lang)}"` : ' class="hljs"';
  return `<pre${langAttr}><code${cls}>${code}</code></pre>\n`;
};
md.renderer.rules.code_block = (tokens, idx) =>
  `<pre><code class="hljs">${md.utils.escapeHtml(tokens[idx].content.replace(/\n$/, ""))}</code></pre>\n`;

// One DOMPurify of our own, so its hook and config stay ours. The config is set once:
// parsing it on every call was a large share of a small block's render.
const purify = DOMPurify(window);
purify.setConfig({
  USE_PROFILES: { html: true },
  FORBID_ATTR: ["style"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
  RETURN_DOM_FRAGMENT: true,
});
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

function renderMath(root) {
  for (const el of root.querySelectorAll(".math[data-tex]")) {
    const display = el.classList.contains("math--display");
    try {
      katex.render(el.dataset.tex, el, { ...KATEX, displayMode: display });
    } catch (error) {
      el.replaceChildren(el.dataset.tex);
      el.classList.add("katex-error");
      el.title = String(error?.message ?? error);
    }
  }
}

function decorate(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    pre.prepend(copy);
  }
  renderMath(root);
}

function fragmentOf(html) {
  const fragment = purify.sanitize(html);
  decorate(fragment);
  return fragment;
}

function normalize(text) {
  return String(text ?? "").replace(/\r\n?/g, "\n");
}

/** The whole text as sanitized HTML (tests, and anything that wants a string). */
export function renderMarkdown(text) {
  const box = document.createElement("div");
  box.append(fragmentOf(md.render(normalize(text))));
  return box.innerHTML;
}

// Top-level blocks of markdown-it's token stream: [{tokens, line}] with `line` the
// block's first source line (token.map[0]).
function topLevelBlocks(tokens) {
  const blocks = [];
  let current = null;
  for (const token of tokens) {
    if (token.level === 0 && token.nesting >= 0 && (token.nesting === 1 || !current)) {
      current = { tokens: [], line: token.map ? token.map[0] : 0 };
      blocks.push(current);
    }
    current.tokens.push(token);
    if (token.level === 0 && token.nesting <= 0) current = null;
  }
  return blocks;
}

// Character offset of each line start in `text`, up to line `upTo`.
function lineOffset(text, line) {
  let offset = 0;
  for (let i = 0; i < line; i++) {
    const next = text.indexOf("\n", offset);
    if (next < 0) return text.length;
    offset = next + 1;
  }
  return offset;
}

export const renderStats = {
  renders: 0, // calls of renderInto
  totalMs: 0, // time spent in them
  maxMs: 0, // the longest single one
  blocksRendered: 0, // blocks rendered (kept blocks are not counted)
  fullRenders: 0, // renders that started from nothing (first, or the text changed before its end)
  reset() {
    Object.assign(this, { renders: 0, totalMs: 0, maxMs: 0, blocksRendered: 0, fullRenders: 0 });
  },
};
globalThis.__parleyRenderStats = renderStats;

// Per rendered element: the text it shows and its blocks ({start, nodes}).
const states = new WeakMap();

/**
 * Render `text` into `element`, keeping what an earlier render of the same element left
 * where the text before the last block has not changed (a streaming reply's deltas).
 * `streaming` is accepted for callers' clarity: an open fence already renders as code.
 */
export function renderInto(element, text, { streaming = false } = {}) {
  void streaming;
  const start = performance.now();
  const source = normalize(text);
  let state = states.get(element);
  let reuse = false;
  let base = 0;
  if (state && state.blocks.length) {
    const last = state.blocks[state.blocks.length - 1];
    if (source.length >= last.start && source.slice(0, last.start) === state.source.slice(0, last.start)) {
      reuse = true;
      base = last.start;
      for (const node of last.nodes) node.remove();
      state.blocks.pop();
    }
  }
  if (!reuse) {
    renderStats.fullRenders += 1;
    element.replaceChildren();
    state = { source: "", blocks: [], env: {} };
    states.set(element, state);
  }
  const blocks = state.blocks;
  const rest = source.slice(base);
  for (const block of topLevelBlocks(md.parse(rest, state.env))) {
    const fragment = fragmentOf(md.renderer.render(block.tokens, md.options, state.env));
    const nodes = [...fragment.childNodes];
    element.append(fragment);
    blocks.push({ start: base + lineOffset(rest, block.line), nodes });
    renderStats.blocksRendered += 1;
  }
  state.source = source;

  const end = performance.now();
  const measure = performance.measure("parley:render", { start, end });
  performance.clearMeasures("parley:render"); // the totals are kept below; the buffer is not
  renderStats.renders += 1;
  renderStats.totalMs += measure.duration;
  renderStats.maxMs = Math.max(renderStats.maxMs, measure.duration);
}

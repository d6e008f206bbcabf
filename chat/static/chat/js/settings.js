// The room settings page: the room, its assistants, members and invite links, through
// the JSON API. Owners and staff edit; members read. The page re-reads what it shows
// whenever a `room` event says the room changed (server-sent events, as a room page
// without a WebSocket does), so every open settings page stays current.

import { api, ApiError } from "./api.js";

const config = JSON.parse(document.getElementById("parley-config").textContent);
const slug = config.room.slug;
const canEdit = config.can_edit;
const base = `/api/rooms/${encodeURIComponent(slug)}`;
const $ = (id) => document.getElementById(id);

function showError(err) {
  const box = $("settings-error");
  box.textContent = err instanceof ApiError ? err.detail : String(err);
  box.hidden = false;
}

function clearError() {
  $("settings-error").hidden = true;
}

// Run an API call from a button or form; show its error, re-read the page after.
async function act(fn) {
  clearError();
  try {
    await fn();
  } catch (err) {
    showError(err);
  }
  await refresh();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillRoom(room) {
  const form = $("room-form");
  form.elements.name.value = room.name;
  form.elements.visibility.value = room.visibility;
  form.elements.voice.value = room.voice;
  form.elements.prompt_heard_text.checked = room.prompt_heard_text;
  for (const field of form.elements) field.disabled = !canEdit;
}

let models = [];

function modelSelect(name, current) {
  const select = el("select", { name });
  const ids = models.map((m) => m.id);
  if (current && !ids.includes(current)) ids.unshift(current);
  for (const id of ids) select.append(el("option", { value: id }, id));
  if (current) select.value = current;
  return select;
}

function fillAssistants(list) {
  const box = $("assistants");
  box.replaceChildren();
  for (const a of list) {
    const item = el("li", { class: "settings__item", "data-handle": a.handle });
    const who = `${a.avatar ? a.avatar + " " : ""}${a.name} (@${a.handle})`;
    item.append(el("strong", {}, who), " ", el("span", { class: "muted" }, `${a.model} · ${a.shared ? "shared" : "this room's"}`));
    if (canEdit) {
      const mode = el("select", { name: "mode", "aria-label": `When @${a.handle} answers` });
      mode.append(el("option", { value: "mention" }, "when @mentioned"), el("option", { value: "always" }, "every message"));
      mode.value = a.mode;
      const edit = el("form", { class: "settings__form" }, el("label", {}, "Answers ", mode));
      if (!a.shared) {
        edit.append(
          el("label", {}, "Name ", el("input", { name: "name", value: a.name, maxlength: "60" })),
          el("label", {}, "Avatar ", el("input", { name: "avatar", value: a.avatar, maxlength: "16" })),
          el("label", {}, "Model ", modelSelect("model", a.model)),
          el("label", {}, "System prompt ", Object.assign(el("textarea", { name: "system_prompt", rows: "2" }), { value: a.system_prompt })),
          el("label", {}, "Temperature ", el("input", { name: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: a.temperature ?? "" })),
          el("label", {}, "Max tokens ", el("input", { name: "max_tokens", type: "number", min: "1", max: "32768", value: a.max_tokens ?? "" })),
          el("label", {}, "Voice ", el("input", { name: "voice", value: a.voice, maxlength: "80" })),
        );
      }
      edit.append(el("button", { type: "submit" }, "Save"));
      edit.addEventListener("submit", (e) => {
        e.preventDefault();
        const body = a.shared ? { mode: mode.value } : assistantFields(edit);
        act(() => api("PATCH", `${base}/assistants/${encodeURIComponent(a.handle)}`, body));
      });
      const remove = el("button", { type: "button", class: "btn btn--ghost btn--small" }, "Remove");
      remove.addEventListener("click", () => act(() => api("DELETE", `${base}/assistants/${encodeURIComponent(a.handle)}`)));
      item.append(edit, remove);
    } else {
      item.append(" ", el("span", {}, a.mode === "always" ? "answers every message" : "answers when @mentioned"));
    }
    box.append(item);
  }
}

// A form's assistant fields as the API takes them (empty numbers: the server's default).
function assistantFields(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name) continue;
    if (field.name === "temperature" || field.name === "max_tokens") {
      body[field.name] = field.value === "" ? null : Number(field.value);
    } else {
      body[field.name] = field.value;
    }
  }
  return body;
}

function fillMembers(list) {
  const box = $("members");
  box.replaceChildren();
  for (const m of list) {
    const item = el("li", { class: "settings__item", "data-username": m.username }, el("strong", {}, m.username), " ", el("span", { class: "muted" }, m.role));
    if (canEdit && m.username !== config.room.owner) {
      const role = m.role === "owner" ? "member" : "owner";
      const label = m.role === "owner" ? "Make a member" : "Make an owner";
      item.append(" ", el("button", { type: "button", class: "btn btn--ghost btn--small", onclick: () => act(() => api("PATCH", `${base}/members/${encodeURIComponent(m.username)}`, { role })) }, label));
      item.append(" ", el("button", { type: "button", class: "btn btn--ghost btn--small", onclick: () => act(() => api("DELETE", `${base}/members/${encodeURIComponent(m.username)}`)) }, "Remove"));
    }
    box.append(item);
  }
}

function fillInvites(list) {
  const box = $("invites");
  box.replaceChildren();
  for (const invite of list) {
    const copy = el("button", { type: "button", class: "btn btn--ghost btn--small" }, "Copy");
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(invite.url));
    const revoke = el("button", { type: "button", class: "btn btn--ghost btn--small" }, "Revoke");
    revoke.addEventListener("click", () => act(() => api("DELETE", `${base}/invites/${encodeURIComponent(invite.token)}`)));
    box.append(el("li", { class: "settings__item" }, el("input", { readonly: "", value: invite.url, "aria-label": "Invite link" }), " ", el("span", { class: "muted" }, `until ${new Date(invite.expires).toLocaleString()}`), " ", copy, " ", revoke));
  }
}

async function loadModels() {
  if (!canEdit) return;
  try {
    const found = await api("GET", "/api/models");
    models = found.models;
    const box = $("models-error");
    box.textContent = found.errors.map((e) => `${e.provider}: ${e.error}`).join(" ");
    box.hidden = found.errors.length === 0;
    const select = $("model-select");
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
    const shared = await api("GET", "/api/assistants/shared");
    $("shared-select").replaceChildren(...shared.assistants.map((a) => el("option", { value: a.handle }, `${a.name} (@${a.handle}, ${a.model})`)));
    $("shared-form").hidden = shared.assistants.length === 0;
  } catch (err) {
    showError(err);
  }
}

async function refresh() {
  try {
    const [room, assistants, members] = await Promise.all([
      api("GET", base),
      api("GET", `${base}/assistants`),
      api("GET", `${base}/members`),
    ]);
    fillRoom(room);
    fillAssistants(assistants.assistants);
    fillMembers(members.members);
    if (canEdit) fillInvites((await api("GET", `${base}/invites`)).invites);
    document.body.dataset.loaded = "1";
  } catch (err) {
    showError(err);
  }
}

if (canEdit) {
  $("room-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target.elements;
    act(() => api("PATCH", base, { name: f.name.value, visibility: f.visibility.value, voice: f.voice.value, prompt_heard_text: f.prompt_heard_text.checked }));
  });
  $("assistant-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = assistantFields(e.target);
    for (const key of ["avatar", "system_prompt", "voice"]) if (body[key] === "") delete body[key];
    act(async () => {
      await api("POST", `${base}/assistants`, body);
      e.target.reset();
    });
  });
  $("shared-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act(() => api("POST", `${base}/assistants`, { shared: e.target.elements.shared.value, mode: "mention" }));
  });
  $("member-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act(async () => {
      await api("POST", `${base}/members`, { username: e.target.elements.username.value });
      e.target.reset();
    });
  });
  $("invite-create").addEventListener("click", () => act(() => api("POST", `${base}/invites`)));
}

// Live: every `room` event (another owner's change, or this page's own) re-reads.
const stream = new EventSource(`${base}/events`);
stream.addEventListener("room", () => refresh());

await loadModels();
await refresh();

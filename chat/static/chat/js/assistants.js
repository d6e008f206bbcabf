// How the page shows a room's assistants: the avatar of each (docs/protocol.md
// "Assistants": `avatar` is an emoji, a colour "#rrggbb", or "" for one derived from the
// handle), and the name a reply is shown under.

const COLOUR = /^#[0-9a-fA-F]{6}$/;
// The room's first assistant as rooms have always had it: its mark stays the one it had.
const DEFAULT_HANDLE = "assistant";
const DEFAULT_MARK = "✦";

export function hue(name) {
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

// Fills `el` (an avatar circle) for an assistant {handle, name, avatar}.
export function paintAvatar(el, { handle = DEFAULT_HANDLE, name = "", avatar = "" } = {}) {
  el.style.removeProperty("--hue");
  el.style.removeProperty("--avatar");
  delete el.dataset.avatar;
  if (avatar && !COLOUR.test(avatar)) {
    el.dataset.avatar = "emoji";
    el.textContent = avatar;
    return;
  }
  if (!avatar && handle === DEFAULT_HANDLE) {
    el.textContent = DEFAULT_MARK;
    return;
  }
  el.dataset.avatar = "colour";
  el.textContent = (name || handle || "?").slice(0, 1).toUpperCase();
  if (avatar) el.style.setProperty("--avatar", avatar);
  else el.style.setProperty("--hue", hue(handle));
}

// The name a reply is shown under: its assistant's (older replies carry none).
export function replyName(message) {
  return (message.assistant && message.assistant.name) || "Assistant";
}

// The assistant a reply names, with its avatar from the room's list when it is still
// there (a message carries handle, name and model, not the avatar).
export function replyAssistant(message, assistants) {
  const handle = (message.assistant && message.assistant.handle) || message.author || DEFAULT_HANDLE;
  const placed = (assistants || []).find((a) => a.handle === handle);
  return { handle, name: replyName(message), avatar: placed ? placed.avatar : "" };
}

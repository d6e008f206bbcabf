// The room list and the join page: create a room, join a public one (JSON API), and the
// rooms' unread badges (unread.js).

import { ApiError, rooms } from "./api.js";
import { paintBadge } from "./unread.js";

const roomUrl = (slug) => `/rooms/${encodeURIComponent(slug)}/`;

function showError(id, err) {
  const box = document.getElementById(id);
  if (!box) return;
  box.textContent = err instanceof ApiError ? err.detail : String(err);
  box.hidden = false;
}

const form = document.getElementById("create-room");
if (form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const fields = Object.fromEntries(new FormData(form));
    try {
      const room = await rooms.create(fields);
      location.assign(roomUrl(room.slug));
    } catch (err) {
      showError("create-error", err);
      button.disabled = false;
    }
  });
}

document.addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-join]");
  if (!button) return;
  button.disabled = true;
  try {
    const room = await rooms.join(button.dataset.join);
    location.assign(roomUrl(room.slug));
  } catch (err) {
    showError("join-error", err);
    button.disabled = false;
  }
});

// Unread badges: rendered with the page, and read again when the page shows again (back
// from a room, or a tab brought forward), so a room just read loses its badge.
async function refreshBadges() {
  let listed;
  try {
    listed = await rooms.list();
  } catch {
    return; // the badges stay as they were
  }
  for (const room of listed.rooms) {
    const card = document.querySelector(`#my-rooms .room-card[data-slug="${CSS.escape(room.slug)}"]`);
    const badge = card && card.querySelector(".unread");
    if (badge) paintBadge(badge, room.unread || 0, room.mentioned);
  }
}

window.addEventListener("pageshow", (e) => {
  if (e.persisted) refreshBadges();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshBadges();
});

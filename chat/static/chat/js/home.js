// The room list and the join page: create a room, join a public one (JSON API).

import { ApiError, rooms } from "./api.js";

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

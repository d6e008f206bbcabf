// The room's members in the details panel: the owner removes a member, a member leaves.
//
// Both ask first (a misplaced tap would otherwise cost a membership). The server closes
// a removed member's live connection itself (4403, at its next access check).

import { ApiError, rooms } from "./api.js";

export function wireMembers({ slug, onError }) {
  const list = document.getElementById("members");
  list?.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-remove]");
    if (!button) return;
    const name = button.dataset.remove;
    if (!window.confirm(`Remove ${name} from this room?`)) return;
    button.disabled = true;
    try {
      await rooms.removeMember(slug, name);
      button.closest("li").remove();
    } catch (err) {
      button.disabled = false;
      onError(err instanceof ApiError ? err.detail : String(err));
    }
  });
  const leave = document.getElementById("leave-room");
  leave?.addEventListener("click", async () => {
    if (!window.confirm("Leave this room? You can join a public room again; a private one needs its owner.")) return;
    leave.disabled = true;
    try {
      await rooms.leave(slug);
      window.location.assign("/");
    } catch (err) {
      leave.disabled = false;
      onError(err instanceof ApiError ? err.detail : String(err));
    }
  });
}

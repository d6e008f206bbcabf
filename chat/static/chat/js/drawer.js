// The room details as a drawer on narrow screens (below 860 px, parley.css): the toggle in
// the room's bar opens it; its Close button, a tap on the backdrop beside it, or Escape
// close it. Focus goes into the drawer when it opens and back to the toggle when it closes.
// On wide screens the panel is always shown and none of this is visible.

export function wireDrawer({ toggle, side, close, backdrop }) {
  const isOpen = () => side.classList.contains("side--open");

  function setOpen(open) {
    side.classList.toggle("side--open", open);
    backdrop.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) close.focus();
  }

  function shut() {
    if (!isOpen()) return;
    setOpen(false);
    toggle.focus();
  }

  toggle.addEventListener("click", () => (isOpen() ? shut() : setOpen(true)));
  close.addEventListener("click", shut);
  backdrop.addEventListener("click", shut);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && isOpen()) {
      e.preventDefault();
      shut();
    }
  });
  return { open: () => setOpen(true), close: shut, isOpen };
}

// The console's only script: refresh the live part of a page (#live, its data-live URL as a fragment) every few
// seconds, and ask before the actions that cannot be taken back. Pages work without it.
"use strict";
(function () {
  const EVERY_MS = 3000;
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  const say = (text) => { if (status) status.textContent = text; };

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  if (!live || !live.dataset.live) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const url = new URL(live.dataset.live, window.location.href);
      url.searchParams.set("partial", "1");
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.status === 401) { say("Session ended: reload the page to log in again."); return; }
      if (!response.ok && response.status !== 422) { say("Refresh failed (HTTP " + response.status + "); retrying."); return; }
      live.innerHTML = await response.text();
      live.dataset.refreshed = String(Date.now());
      say("Updated " + new Date().toLocaleTimeString());
    } catch (err) {
      say("Hub unreachable; retrying.");
    } finally {
      busy = false;
    }
  }
  window.setInterval(refresh, EVERY_MS);
})();

// The mining page: the miner's figures refreshed every few seconds.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const rate = document.getElementById("mining-rate");
  if (!rate) return;
  const set = (id, text) => {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  };
  setInterval(async () => {
    try {
      const response = await fetch("/api/mining/status", { credentials: "same-origin" });
      const status = await response.json();
      if (!response.ok || !status.mining) return;
      set("mining-rate", Math.round(status.mining.attemptsPerSecond).toLocaleString());
      set("mining-blocks", status.mining.blocksMined);
      set("mining-side", status.mining.sideBlocks);
      set("mining-state", status.mining.active ? "mining" : "stopped");
      set("head-height", status.height);
    } catch (_) {
      /* the next tick tries again */
    }
  }, 3000);
});

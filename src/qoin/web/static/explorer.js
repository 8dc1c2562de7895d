// The explorer's home page: new heads arrive over the node's subscription (/ws/heads) and are
// added to the recent blocks table.
"use strict";

function shortText(text, keep) {
  return text.length <= 2 * keep + 1 ? text : `${text.slice(0, keep)}…${text.slice(-keep)}`;
}

function cell(row, text, href, className) {
  const td = row.insertCell();
  if (className) td.className = className;
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("#blocks tbody");
  if (!table) return;
  subscribe((head) => {
    const height = document.getElementById("head-height");
    if (height) {
      height.textContent = head.height;
      height.href = `/block/${head.height}`;
    }
    const hash = document.getElementById("head-hash");
    if (hash) hash.textContent = shortText(head.hash, 10);
    const row = table.insertRow(0);
    row.className = "fresh";
    cell(row, String(head.height), `/block/${head.height}`);
    cell(row, shortText(head.hash, 8), `/block/${head.hash}`, "mono");
    cell(row, shortText(head.miner || "", 8), `/account/${head.miner}`, "mono wide");
    cell(row, String(head.transactionCount ?? ""));
    cell(row, new Date(head.timestampMs).toISOString().replace("T", " ").slice(0, 19) + " UTC", null, "wide");
    while (table.rows.length > 30) table.deleteRow(-1);
  });
});

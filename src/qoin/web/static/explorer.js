// The explorer's home page: new heads arrive over the node's subscription (/ws/heads) and are
// added to the recent blocks table. Heads can arrive merged (the node announces only the newest of
// several blocks, or the page missed some while it connected): the heights in between are fetched
// from /api/blocks, at most the table's ROWS, so the table stays continuous. A head at or below
// the table's top (a reorganisation) replaces the rows from its height up.
"use strict";

const ROWS = 30;

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

function topHeight(table) {
  const row = table.rows[0];
  const height = row ? Number(row.dataset.height || row.cells[0].textContent) : NaN;
  return Number.isInteger(height) ? height : null;
}

function addRow(table, block) {
  const row = table.insertRow(0);
  row.className = "fresh";
  row.dataset.height = String(block.height);
  cell(row, String(block.height), `/block/${block.height}`);
  cell(row, shortText(block.hash || "", 8), `/block/${block.hash}`, "mono");
  cell(row, shortText(block.miner || "", 8), `/account/${block.miner}`, "mono wide");
  cell(row, String(block.transactionCount ?? ""));
  const when = Number.isFinite(block.timestampMs)
    ? new Date(block.timestampMs).toISOString().replace("T", " ").slice(0, 19) + " UTC"
    : "";
  cell(row, when, null, "wide");
}

async function missingBlocks(from, to) {
  if (from > to) return [];
  const response = await fetch(`/api/blocks?from=${from}&to=${to}`, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`/api/blocks: ${response.status}`);
  return (await response.json()).blocks;
}

// Fill the rows between the table's top and the height `below` (a new head's): at most ROWS,
// fetched in one request; asked again if rows went away while it was on its way.
async function fillGap(table, below) {
  for (let round = 0; round < 3; round++) {
    const top = topHeight(table);
    if (top === null || top >= below - 1) return;
    const blocks = await missingBlocks(Math.max(top + 1, below - ROWS), below - 1);
    const now = topHeight(table);
    if (now !== null && now < top) continue;
    for (const block of blocks) {
      const current = topHeight(table);
      if (block.height >= below || (current !== null && block.height <= current)) continue;
      // Rows older than a gap wider than the table are dropped: the table stays continuous.
      if (current !== null && block.height > current + 1) table.replaceChildren();
      addRow(table, block);
    }
    return;
  }
}

async function showHead(table, head) {
  const height = document.getElementById("head-height");
  if (height) {
    height.textContent = head.height;
    height.href = `/block/${head.height}`;
  }
  const hash = document.getElementById("head-hash");
  if (hash) hash.textContent = shortText(head.hash, 10);
  // A head at or below the top replaces those rows (the chain reorganised).
  while (table.rows.length && topHeight(table) !== null && topHeight(table) >= head.height) {
    table.deleteRow(0);
  }
  try {
    await fillGap(table, head.height);
  } catch (err) {
    console.error(err);
  }
  addRow(table, head);
  while (table.rows.length > ROWS) table.deleteRow(-1);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("#blocks tbody");
  if (!table) return;
  // One head at a time, in order: a gap's blocks are fetched before the next head is shown.
  let queue = Promise.resolve();
  subscribe((head) => {
    queue = queue.then(() => showHead(table, head));
  });
});

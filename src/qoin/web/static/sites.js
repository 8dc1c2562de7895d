// The sites page: pack the chosen folder into the site archive (the format qoin.sites checks:
// "qoin-site/1\n", a varint count, then each file's path and bytes as varint-prefixed strings,
// sorted by the paths' UTF-8 bytes) and publish it.
"use strict";

(function () {
  const form = document.getElementById("publish-form");
  if (!form) return;
  const encoder = new TextEncoder();
  const result = form.querySelector("[data-result]");
  const summary = document.getElementById("publish-summary");
  const bar = document.getElementById("publish-progress");

  function varint(value) {
    const out = [];
    let v = value;
    while (v >= 0x80) {
      out.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    out.push(v);
    return new Uint8Array(out);
  }

  function compare(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  }

  function chosen() {
    const fromFolder = Array.from(form.elements.folder.files);
    const list = fromFolder.length ? fromFolder : Array.from(form.elements.files.files);
    const entries = [];
    for (const file of list) {
      let path = file.webkitRelativePath || file.name;
      if (file.webkitRelativePath) path = path.split("/").slice(1).join("/");
      path = path.normalize("NFC");
      if (path.split("/").includes(".git")) continue;
      entries.push({ path, bytes: encoder.encode(path), file });
    }
    entries.sort((a, b) => compare(a.bytes, b.bytes));
    return entries;
  }

  function describe() {
    const entries = chosen();
    const size = entries.reduce((sum, e) => sum + e.file.size, 0);
    const index = entries.some((e) => e.path === "index.html") ? "" : " (no index.html at the root: a listing will be shown)";
    summary.textContent = entries.length ? `${entries.length} files, ${size} bytes${index}` : "";
  }
  form.elements.folder.addEventListener("change", describe);
  form.elements.files.addEventListener("change", describe);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const entries = chosen();
    result.classList.remove("bad");
    if (!entries.length) {
      result.textContent = "choose a folder or files";
      result.classList.add("bad");
      return;
    }
    const parts = [encoder.encode("qoin-site/1\n"), varint(entries.length)];
    for (const entry of entries) {
      const data = new Uint8Array(await entry.file.arrayBuffer());
      parts.push(varint(entry.bytes.length), entry.bytes, varint(data.length), data);
    }
    const archive = new Blob(parts);
    if (archive.size > Number(form.dataset.max)) {
      result.textContent = `a site is at most ${form.dataset.max} bytes packed; this one is ${archive.size}`;
      result.classList.add("bad");
      return;
    }
    const query = new URLSearchParams({
      name: form.elements.name.value.trim(),
      duration: form.elements.duration.value,
    });
    const button = form.querySelector("button");
    await uploadToTask(
      `/api/sites/publish?${query}`,
      archive,
      { button, bar, result },
      "sending the site to the UI…",
    );
  });
})();

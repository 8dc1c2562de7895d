// The storage pages: upload a file (progress of the bytes sent, then the task page follows the
// market's stages), download a stored file (decrypted by the UI with the unlocked wallet), cancel.
"use strict";

async function postForBlob(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Qoin-Session": sessionToken() },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      /* not JSON */
    }
    throw new Error(message);
  }
  return response.blob();
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

const uploadForm = document.getElementById("upload-form");
if (uploadForm) {
  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = uploadForm.elements.file.files[0];
    const result = uploadForm.querySelector("[data-result]");
    const bar = document.getElementById("upload-progress");
    const button = uploadForm.querySelector("button");
    if (!file) return;
    if (file.size > Number(uploadForm.dataset.max)) {
      result.textContent = `the UI stores files of at most ${uploadForm.dataset.max} bytes (use qoin storage put)`;
      result.classList.add("bad");
      return;
    }
    const query = new URLSearchParams({
      name: file.name,
      duration: uploadForm.elements.duration.value,
      shards: uploadForm.elements.shards.value,
      needed: uploadForm.elements.needed.value,
      public: uploadForm.elements.public.checked ? "1" : "",
    });
    await uploadToTask(
      `/api/storage/upload?${query}`,
      file,
      { button, bar, result },
      "sending the file to the UI…",
      "stored in the background: following it…",
    );
  });
}

const actions = document.getElementById("actions");
if (actions) {
  const cid = actions.dataset.cid;
  const out = document.getElementById("action-result");
  const say = (text, bad) => {
    out.textContent = text;
    out.classList.toggle("bad", Boolean(bad));
  };
  const download = document.getElementById("download");
  if (download) {
    download.addEventListener("click", async () => {
      download.disabled = true;
      say("fetching from the providers, verifying every chunk…");
      try {
        saveBlob(await postForBlob("/api/storage/download", { cid }), `${cid}.bin`);
        say("downloaded");
      } catch (err) {
        say(err.message, true);
      } finally {
        download.disabled = false;
      }
    });
  }
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!confirm("Cancel this storage? The periods not yet begun are refunded.")) return;
      cancel.disabled = true;
      try {
        const answer = await api("/api/storage/cancel", { cid });
        say(answer.message);
        setTimeout(() => location.reload(), 1500);
      } catch (err) {
        say(err.message, true);
        cancel.disabled = false;
      }
    });
  }
}

// Qoin web UI helpers (no build step). Every page loads this; page scripts live in
// /static/<module>.js (the Content-Security-Policy forbids inline scripts).
//
//   api(path, body)            POST JSON with the session token header; resolves to the JSON
//                              answer, rejects with an Error carrying the server's message.
//   upload(path, blob, onProgress, headers)
//                              POST raw bytes (XMLHttpRequest, for upload progress: onProgress(sent,
//                              total)); resolves to the JSON answer.
//   uploadToTask(path, blob, { button, bar, result }, sending, sent)
//                              upload() from a form: the button disabled meanwhile, the bytes sent
//                              on the <progress> bar, the texts (or the error) in result; follows
//                              the answer's redirect (the task's page).
//   subscribe(onHead)          call onHead(head) for every new head (the node's newHeads, proxied
//                              at /ws/heads), reconnecting; returns a function that stops it.
//   forms: <form data-api="/api/x"> posts its fields as JSON through api(); the answer's
//          "message" (or the error) is shown in the form's [data-result] element; an answer with
//          "redirect" navigates there, one with "reload": true reloads the page.
"use strict";

function sessionToken() {
  const meta = document.querySelector('meta[name="qoin-session"]');
  return meta ? meta.content : "";
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Qoin-Session": sessionToken() },
    body: JSON.stringify(body === undefined ? {} : body),
  });
  let data;
  try {
    data = await response.json();
  } catch (_) {
    data = { error: response.statusText || "no answer" };
  }
  if (!response.ok) {
    throw new Error(data.error || response.statusText);
  }
  return data;
}

function upload(path, blob, onProgress, headers) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("X-Qoin-Session", sessionToken());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    for (const [name, value] of Object.entries(headers || {})) {
      xhr.setRequestHeader(name, value);
    }
    if (onProgress) {
      xhr.upload.onprogress = (event) => onProgress(event.loaded, event.total);
    }
    xhr.onload = () => {
      let data;
      try {
        data = JSON.parse(xhr.responseText);
      } catch (_) {
        data = { error: xhr.statusText || "no answer" };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new Error(data.error || xhr.statusText));
    };
    xhr.onerror = () => reject(new Error("the upload failed (network)"));
    xhr.send(blob);
  });
}

async function uploadToTask(path, blob, { button, bar, result }, sending, sent) {
  button.disabled = true;
  bar.hidden = false;
  result.classList.remove("bad");
  result.textContent = sending;
  try {
    const answer = await upload(path, blob, (done, total) => {
      bar.max = total || 1;
      bar.value = done;
    });
    if (sent) result.textContent = sent;
    location.assign(answer.redirect);
  } catch (err) {
    result.textContent = err.message;
    result.classList.add("bad");
  } finally {
    button.disabled = false;
  }
}

function subscribe(onHead) {
  let socket = null;
  let stopped = false;
  let delay = 1000;
  const dots = () => document.querySelectorAll(".live");
  function open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws/heads`);
    socket.onopen = () => {
      delay = 1000;
      dots().forEach((dot) => dot.classList.add("on"));
    };
    socket.onmessage = (event) => {
      try {
        onHead(JSON.parse(event.data));
      } catch (err) {
        console.error(err);
      }
    };
    socket.onclose = () => {
      dots().forEach((dot) => dot.classList.remove("on"));
      if (!stopped) {
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 30000);
      }
    };
  }
  open();
  return () => {
    stopped = true;
    if (socket) socket.close();
  };
}

function formFields(form) {
  const body = {};
  for (const [name, value] of new FormData(form).entries()) {
    if (typeof value === "string") body[name] = value;
  }
  return body;
}

function showResult(form, text, bad) {
  const box = form.querySelector("[data-result]");
  if (!box) {
    if (bad) alert(text);
    return;
  }
  box.textContent = text;
  box.classList.toggle("bad", Boolean(bad));
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
  event.preventDefault();
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  showResult(form, "working…", false);
  try {
    const answer = await api(form.dataset.api, formFields(form));
    showResult(form, answer.message || "done", false);
    form.dispatchEvent(new CustomEvent("qoin:answer", { detail: answer }));
    if (answer.redirect) location.assign(answer.redirect);
    else if (answer.reload) location.reload();
  } catch (err) {
    showResult(form, err.message, true);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
});

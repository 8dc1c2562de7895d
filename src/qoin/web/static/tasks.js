// A task page (/tasks/ID): polls the task — its phases, progress bars, live output, a training
// run's loss per epoch, its result and result files — until it ends.
"use strict";

(function () {
  const box = document.getElementById("task");
  if (!box) return;
  const id = box.dataset.task;
  const el = (name) => document.getElementById(name);
  let since = 0;
  let shownPhases = 0;
  let shownEpochs = 0;

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function bars(list) {
    const holder = el("task-bars");
    holder.replaceChildren();
    for (const bar of list) {
      const label = document.createElement("div");
      label.className = "label";
      label.textContent = `${bar.description}${bar.note ? ` (${bar.note})` : ""}: ${bar.done} of ${bar.total}`;
      const progress = document.createElement("progress");
      progress.max = bar.total || 1;
      progress.value = bar.done;
      holder.append(label, progress);
    }
  }

  function number(value) {
    return typeof value === "number" ? value.toPrecision(4) : "";
  }

  function loss(history) {
    if (!history.length) return;
    el("task-loss-card").hidden = false;
    const table = el("task-epochs");
    for (const epoch of history.slice(shownEpochs)) {
      const row = table.insertRow();
      cell(row, `${epoch.epoch}/${epoch.epochs}`);
      cell(row, number(epoch.loss));
      cell(row, number(epoch.testLoss));
      cell(row, number(epoch.accuracy));
    }
    shownEpochs = history.length;
    const values = history.map((e) => e.loss).filter((v) => typeof v === "number");
    if (!values.length) return;
    const high = Math.max(...values);
    const low = Math.min(...values);
    const span = high - low || 1;
    const step = values.length > 1 ? 390 / (values.length - 1) : 0;
    const points = values.map((v, i) => `${5 + i * step},${115 - ((v - low) / span) * 105}`);
    const svg = el("task-loss");
    svg.replaceChildren();
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2753c9");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
  }

  function files(names) {
    const holder = el("task-files");
    holder.replaceChildren();
    for (const name of names) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = `Download ${name}`;
      button.addEventListener("click", async () => {
        try {
          const response = await fetch(`/api/tasks/${id}/file`, {
            method: "POST",
            credentials: "same-origin",
            headers: { "Content-Type": "application/json", "X-Qoin-Session": sessionToken() },
            body: JSON.stringify({ name }),
          });
          if (!response.ok) throw new Error((await response.json()).error || response.statusText);
          const url = URL.createObjectURL(await response.blob());
          const link = document.createElement("a");
          link.href = url;
          link.download = name.split("/").pop();
          document.body.appendChild(link);
          link.click();
          link.remove();
        } catch (err) {
          alert(err.message);
        }
      });
      holder.appendChild(button);
    }
  }

  async function poll() {
    let task;
    try {
      task = await api(`/api/tasks/${id}`, { since });
    } catch (err) {
      el("task-error").textContent = err.message;
      setTimeout(poll, 3000);
      return;
    }
    el("task-state").textContent = task.state;
    el("task-error").textContent = task.error || "";
    bars(task.bars);
    const table = el("task-phases");
    for (const phase of task.phases.slice(shownPhases)) {
      const row = table.insertRow();
      cell(row, phase.phase);
      cell(row, phase.message);
    }
    shownPhases = task.phases.length;
    if (task.output) {
      el("task-output-card").hidden = false;
      const pre = el("task-output");
      pre.textContent += task.output;
      pre.scrollTop = pre.scrollHeight;
    }
    since = task.outputEnd;
    loss(task.history);
    if (task.result || task.files.length) {
      el("task-result-card").hidden = false;
      el("task-result").textContent = JSON.stringify(task.result, null, 2);
      files(task.files);
    }
    if (task.state === "running") setTimeout(poll, 1000);
  }
  poll();
})();

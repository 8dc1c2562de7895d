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

  const SVG = "http://www.w3.org/2000/svg";
  let history = [];

  function svgChild(svg, name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  }

  // The loss chart: drawn in the chart's own pixels (its viewBox is its size, so it spans the
  // card and its text is not stretched), redrawn when the page is resized. x: the epoch, y: the
  // loss (training, and test when known), with the axes labelled.
  function chart() {
    const svg = el("task-loss");
    const lossOf = (key) => history.map((e) => ({ x: e.epoch, y: e[key] })).filter((p) => typeof p.y === "number");
    const series = [
      { points: lossOf("loss"), className: "loss" },
      { points: lossOf("testLoss"), className: "test-loss" },
    ].filter((s) => s.points.length);
    svg.replaceChildren();
    if (!series.length) return;
    const width = Math.max(svg.clientWidth, 200);
    const height = Math.max(svg.clientHeight, 120);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const left = 56, right = 14, top = 10, bottom = 38;
    const plotW = width - left - right, plotH = height - top - bottom;
    const all = series.flatMap((s) => s.points);
    const values = all.map((p) => p.y);
    const firstEpoch = Math.min(...all.map((p) => p.x));
    const planned = Math.max(...history.map((e) => (typeof e.epochs === "number" ? e.epochs : 0)));
    const lastEpoch = Math.max(...all.map((p) => p.x), planned, firstEpoch + 1);
    let high = Math.max(...values);
    let low = Math.min(0, ...values);
    if (high === low) high = low + 1;
    const x = (epoch) => left + ((epoch - firstEpoch) / (lastEpoch - firstEpoch)) * plotW;
    const y = (value) => top + (1 - (value - low) / (high - low)) * plotH;
    for (let i = 0; i <= 4; i++) {
      const value = low + ((high - low) * i) / 4;
      svgChild(svg, "line", { class: "grid", x1: left, x2: left + plotW, y1: y(value), y2: y(value) });
      svgChild(svg, "text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, value.toPrecision(3));
    }
    const stepEvery = Math.max(1, Math.ceil((lastEpoch - firstEpoch + 1) / 10));
    for (let epoch = firstEpoch; epoch <= lastEpoch; epoch += stepEvery) {
      svgChild(svg, "text", { x: x(epoch), y: top + plotH + 15, "text-anchor": "middle" }, String(epoch));
    }
    svgChild(svg, "line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH });
    svgChild(svg, "line", { class: "axis", x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH });
    svgChild(svg, "text", { class: "axis-label", x: left + plotW / 2, y: height - 4, "text-anchor": "middle" }, "epoch");
    svgChild(svg, "text", {
      class: "axis-label", x: 12, y: top + plotH / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${top + plotH / 2})`,
    }, "loss");
    for (const s of series) {
      const points = s.points.map((p) => `${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`);
      svgChild(svg, "polyline", { class: s.className, points: points.join(" ") });
      if (s.points.length === 1) {
        svgChild(svg, "circle", { class: s.className, cx: x(s.points[0].x), cy: y(s.points[0].y), r: 3 });
      }
    }
  }

  function loss(list) {
    if (!list.length) return;
    el("task-loss-card").hidden = false;
    const table = el("task-epochs");
    for (const epoch of list.slice(shownEpochs)) {
      const row = table.insertRow();
      cell(row, `${epoch.epoch}/${epoch.epochs}`);
      cell(row, number(epoch.loss));
      cell(row, number(epoch.testLoss));
      cell(row, number(epoch.accuracy));
    }
    if (list.length !== shownEpochs) {
      shownEpochs = list.length;
      history = list;
      chart();
    }
  }
  window.addEventListener("resize", () => {
    if (history.length) chart();
  });

  // The result's plain fields (numbers, text, yes/no) as a list; the whole of it is below.
  function summary(result) {
    const list = el("task-summary");
    list.replaceChildren();
    if (!result || typeof result !== "object") return;
    for (const [key, value] of Object.entries(result).slice(0, 40)) {
      if (value === null || typeof value === "object") continue;
      const term = document.createElement("dt");
      term.textContent = key;
      const text = document.createElement("dd");
      text.textContent = typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(4) : String(value);
      list.append(term, text);
    }
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
      summary(task.result);
      files(task.files);
      const train = task.result && task.result.train;
      if (typeof train === "string" && train.startsWith("/compute?")) {
        el("task-train").href = train;
        el("task-next").hidden = false;
      }
    }
    if (task.state === "running") setTimeout(poll, 1000);
  }
  poll();
})();

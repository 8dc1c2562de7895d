// The compute page: the "Prepare a dataset" form sends the chosen file (or nothing, for a
// built-in source) as the raw body of /api/compute/prepare with its upload progress, then the
// task page follows the preparation and storage.
"use strict";

const prepareForm = document.getElementById("prepare-form");
if (prepareForm) {
  const fields = prepareForm.elements;
  const fileLabel = prepareForm.querySelector('[data-when="file"]');
  const showSource = () => {
    fileLabel.hidden = fields.source.value !== "file";
  };
  fields.source.addEventListener("change", showSource);
  showSource();
  prepareForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = prepareForm.querySelector("[data-result]");
    const bar = document.getElementById("prepare-progress");
    const button = prepareForm.querySelector("button");
    const say = (text, bad) => {
      result.textContent = text;
      result.classList.toggle("bad", Boolean(bad));
    };
    const source = fields.source.value;
    const file = source === "file" ? fields.file.files[0] : null;
    if (source === "file" && !file) {
      say("choose a file to prepare (or a built-in source)", true);
      return;
    }
    if (file && file.size > Number(prepareForm.dataset.max)) {
      say(`the UI prepares files of at most ${prepareForm.dataset.max} bytes (use qoin ai prepare)`, true);
      return;
    }
    const query = new URLSearchParams({
      source,
      filename: file ? file.name : "",
      name: fields.name.value,
      test: fields.test.value,
      seed: fields.seed.value,
      duration: fields.duration.value,
    });
    button.disabled = true;
    say(file ? "sending the file to the UI…" : "starting…", false);
    bar.hidden = !file;
    try {
      const answer = await upload(`/api/compute/prepare?${query}`, file || new Blob([]), (sent, total) => {
        bar.max = total || 1;
        bar.value = sent;
      });
      say("preparing in the background: following it…", false);
      location.assign(answer.redirect);
    } catch (err) {
      say(err.message, true);
    } finally {
      button.disabled = false;
    }
  });
}

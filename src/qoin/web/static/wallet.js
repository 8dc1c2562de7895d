// The wallet page: a keystore file chosen is read into the import form's JSON field.
"use strict";

document.addEventListener("change", (event) => {
  const input = event.target;
  if (!(input instanceof HTMLInputElement) || !input.dataset.fill || !input.files.length) return;
  const target = input.form.querySelector(`[name="${input.dataset.fill}"]`);
  const reader = new FileReader();
  reader.onload = () => {
    target.value = reader.result;
  };
  reader.readAsText(input.files[0]);
});

// The copy button beside a new key (shown once).
"use strict";
(function () {
  const button = document.getElementById("copy-key");
  if (!button) return;
  button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.target);
    const status = document.getElementById("copy-status");
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied.";
    } catch (e) {
      input.select();
      status.textContent = "Selected: press Ctrl+C to copy.";
    }
  });
})();

// One confirmation dialog for every action: what will happen, a reason when the API records one,
// and for the irreversible ones a word to type. Resolves to {reason} or null when cancelled.
import { $ } from "./dom.js";

export function confirmAction({ title, text, reason = false, word = null, button = "Confirm" }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-reason-label").hidden = !reason;
  $("confirm-reason").value = "";
  $("confirm-typed-label").hidden = !word;
  $("confirm-word").textContent = word || "";
  $("confirm-typed").value = "";
  $("confirm-error").textContent = "";
  $("confirm-ok").textContent = button;
  return new Promise((resolve) => {
    const ok = $("confirm-ok");
    const cancel = $("confirm-cancel");
    function finish(result) {
      ok.removeEventListener("click", onOk);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      resolve(result);
    }
    function onOk(event) {
      event.preventDefault();
      const given = $("confirm-reason").value.trim();
      if (reason && !given) {
        $("confirm-error").textContent = "A reason is required: it goes into the audit trail.";
        return;
      }
      if (word && $("confirm-typed").value.trim() !== word) {
        $("confirm-error").textContent = `Type ${word} exactly to confirm.`;
        return;
      }
      finish({ reason: given });
    }
    function onCancel(event) {
      event.preventDefault();
      finish(null);
    }
    ok.addEventListener("click", onOk);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    (reason ? $("confirm-reason") : word ? $("confirm-typed") : ok).focus();
  });
}

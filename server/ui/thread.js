// One conversation's messages: user text as text, replies as sanitised markdown, each with
// its usage line and its Edit or Regenerate action.

import { el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

export function usageText(message) {
  const parts = [];
  const usage = message.usage;
  if (usage) {
    parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  } else if (message.chunks) {
    parts.push(`≈${message.chunks} token${message.chunks === 1 ? "" : "s"}`);
  }
  if (message.tokensPerSecond) parts.push(`${message.tokensPerSecond.toFixed(1)} tokens/s`);
  if (message.seconds) parts.push(`${message.seconds.toFixed(1)} s`);
  if (message.model) parts.push(message.model);
  if (message.stopped) parts.push("stopped");
  return parts.join(" · ");
}

// `pending`: what to show while a reply has no text yet ("Thinking…"), or null.
export function fillBody(body, message, pending) {
  if (message.role !== "assistant") {
    body.textContent = message.content;
  } else if (!message.content && pending) {
    body.replaceChildren(el("span", { className: "pending", text: pending }));
  } else {
    renderMarkdown(body, message.content);
  }
}

// actions: {edit(message, index, view), regenerate(index)}, or null while a reply streams.
export function messageView(message, index, pending, actions) {
  const view = el("article", { className: `message ${message.role}`,
    attrs: { "data-index": String(index) } });
  const body = el("div", { className: "body" });
  fillBody(body, message, pending);
  view.append(el("div", { className: "role", text: message.role === "user" ? "You" : "Assistant" }),
    body);
  if (message.error) view.append(el("div", { className: "error", text: message.error }));
  const meta = el("div", { className: "meta" });
  if (message.role === "assistant") {
    meta.append(el("span", { className: "usage", text: usageText(message) }));
  }
  if (actions && message.role === "user") {
    const edit = el("button", { className: "link edit", text: "Edit", attrs: { type: "button" } });
    edit.addEventListener("click", () => actions.edit(message, index, view));
    meta.append(edit);
  } else if (actions) {
    const again = el("button", { className: "link regenerate", text: "Regenerate",
      attrs: { type: "button" } });
    again.addEventListener("click", () => actions.regenerate(index));
    meta.append(again);
  }
  view.append(meta);
  return view;
}

// Turns `view` into an editor of the message's text: save(text) or cancel().
export function editInPlace(view, message, save, cancel) {
  const input = el("textarea", { className: "edit-input", attrs: { rows: "3" } });
  input.value = message.content;
  const saveButton = el("button", { text: "Save & regenerate", attrs: { type: "button" } });
  const cancelButton = el("button", { className: "secondary", text: "Cancel",
    attrs: { type: "button" } });
  saveButton.addEventListener("click", () => {
    const text = input.value.trim();
    if (text) save(text);
  });
  cancelButton.addEventListener("click", cancel);
  view.replaceChildren(input, el("div", { className: "buttons" }, [saveButton, cancelButton]));
  input.focus();
}

// The list of conversations: open, rename (in place) and delete.

import { $, el } from "./dom.js";

// handlers: {open(conversation), rename(conversation, title), remove(conversation)}
export function renderConversations(conversations, current, handlers) {
  $("conversations").replaceChildren(...conversations.map((conversation) => {
    const item = el("li", { className: conversation === current ? "active" : "" });
    const open = el("button", { className: "title", text: conversation.title,
      attrs: { type: "button", title: conversation.title } });
    const rename = el("button", { className: "icon rename-button", text: "✎",
      attrs: { type: "button", title: "Rename", "aria-label": "Rename" } });
    const remove = el("button", { className: "icon delete-button", text: "✕",
      attrs: { type: "button", title: "Delete", "aria-label": "Delete" } });
    open.addEventListener("click", () => handlers.open(conversation));
    rename.addEventListener("click", () => startRename(conversation, item, handlers.rename));
    remove.addEventListener("click", () => handlers.remove(conversation));
    item.append(open, rename, remove);
    return item;
  }));
}

// Enter or leaving the field keeps the new title, Escape the old one.
function startRename(conversation, item, rename) {
  const input = el("input", { className: "rename", attrs: { "aria-label": "Conversation title" } });
  input.value = conversation.title;
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    rename(conversation, keep && title ? title : conversation.title);
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

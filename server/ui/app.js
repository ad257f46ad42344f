// The chat page: model picker, conversations, streaming replies with Stop, settings and the
// API key. Text the page inserts itself goes in through textContent; model output through
// markdown.js only. This module starts the page: it binds the settings and the controls to
// models.js and chat.js.

import { newChat, renderConversations, renderMessages, send, updateReply } from "./chat.js";
import { $ } from "./dom.js";
import { loadRenderer } from "./markdown.js";
import { onModelsPolled, pickModel, refreshModels, saveKey, watchModels } from "./models.js";
import { describe, showBanner, state } from "./state.js";
import * as store from "./store.js";

function bindSettings() {
  const fields = [["system-prompt", "system"], ["temperature", "temperature"],
    ["max-tokens", "maxTokens"]];
  for (const [id, name] of fields) {
    $(id).value = state.settings[name];
    $(id).addEventListener("change", () => {
      state.settings[name] = $(id).value;
      store.saveSettings(state.settings);
    });
  }
  $("api-key").value = store.apiKey();
  $("api-key").addEventListener("change", () => {
    store.setApiKey($("api-key").value.trim());
    refreshModels();
  });
  $("settings-toggle").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  });
}

async function start() {
  window.addEventListener("error", (e) => showBanner(`Something failed on this page: ${e.message}`));
  window.addEventListener("unhandledrejection",
    (e) => showBanner(`Something failed on this page: ${describe(e.reason)}`));
  onModelsPolled(() => {
    if (state.generation && state.generation.waiting) updateReply();
  });
  bindSettings();
  $("new-chat").addEventListener("click", newChat);
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", () => state.generation && state.generation.controller.abort());
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("model").addEventListener("change", pickModel);
  $("key-form").addEventListener("submit", saveKey);
  const saved = store.currentId();
  state.current = state.conversations.find((c) => c.id === saved) || state.conversations[0] || null;
  renderConversations();
  await loadRenderer();
  renderMessages();
  showBanner("");
  if (await refreshModels() && state.models.some((m) => m.status === "loading")) watchModels();
  document.body.dataset.ready = "true";
}

start().catch((err) => showBanner(`The chat page failed to start: ${describe(err)}`));

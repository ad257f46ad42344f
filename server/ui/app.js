// The chat page: model picker, conversations, streaming replies with Stop, settings and the
// API key. Text the page inserts itself goes in through textContent; model output through
// markdown.js only.

import { ApiError, listModels, loadModel, streamChat } from "./api.js";
import { $, el } from "./dom.js";
import { loadRenderer } from "./markdown.js";
import { renderConversations as drawConversations } from "./sidebar.js";
import * as store from "./store.js";
import { editInPlace, fillBody, messageView, usageText } from "./thread.js";

const STATUS_LABELS = {
  loaded: "ready",
  loading: "loading…",
  unloaded: "not loaded: loads on the first message",
  unloading: "unloading…",
  failed: "failed to load",
};

const state = {
  conversations: store.loadConversations(),
  current: null,
  models: [],
  settings: store.loadSettings(),
  generation: null, // {controller, conversation, reply, waiting}
  watching: false,
  modelsFailed: false,
};

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

// ---- models ----------------------------------------------------------------------------

function selectedModel() {
  return state.models.find((m) => m.id === $("model").value) || null;
}

function renderModels() {
  const select = $("model");
  const wanted = select.value || state.settings.model;
  select.replaceChildren(...state.models.map((m) =>
    el("option", { text: `${m.id} (${STATUS_LABELS[m.status] || m.status})`,
      attrs: { value: m.id } })));
  if (state.models.some((m) => m.id === wanted)) select.value = wanted;
  else {
    const loaded = state.models.find((m) => m.status === "loaded");
    if (loaded) select.value = loaded.id;
  }
  const model = selectedModel();
  const status = $("model-status");
  status.dataset.status = model ? model.status : "none";
  status.textContent = !model ? "no model configured"
    : model.status === "failed" ? `failed to load: ${model.error || "unknown error"}`
      : STATUS_LABELS[model.status] || model.status;
  status.title = model && model.context_length ? `context: ${model.context_length} tokens` : "";
}

async function refreshModels() {
  try {
    state.models = await listModels();
    renderModels();
    if (!state.models.length) showBanner("This server has no model configured.");
    else if (state.modelsFailed) showBanner("");
    state.modelsFailed = false;
    return true;
  } catch (err) {
    state.modelsFailed = true;
    if (err instanceof ApiError && err.status === 401) askForKey(err.message);
    else showBanner(`Could not list the models: ${describe(err)}`);
    return false;
  }
}

// Polls /v1/models while a model loads or a reply waits for its model, so the picker shows it.
async function watchModels() {
  if (state.watching) return;
  state.watching = true;
  try {
    const busy = () => state.models.some((m) => m.status === "loading" || m.status === "unloading")
      || (state.generation && state.generation.waiting);
    do {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (!(await refreshModels())) break;
      if (state.generation && state.generation.waiting) updateReply();
    } while (busy());
  } finally {
    state.watching = false;
  }
}

async function pickModel() {
  state.settings.model = $("model").value;
  store.saveSettings(state.settings);
  const model = selectedModel();
  renderModels();
  if (!model || model.status === "loaded" || model.status === "loading") return;
  model.status = "loading";
  renderModels();
  watchModels();
  try {
    await loadModel(model.id);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) askForKey(err.message);
    else showBanner(`Could not load ${model.id}: ${describe(err)}`);
  }
  await refreshModels();
}

// ---- API key ---------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  showBanner(`${reason} Enter an API key to chat.`);
  $("key-input").value = store.apiKey();
  dialog.showModal();
  $("key-input").focus();
}

async function saveKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  store.setApiKey(key);
  $("api-key").value = key;
  $("key-dialog").close();
  showBanner("");
  await refreshModels();
}

// ---- conversations ---------------------------------------------------------------------

function saveConversations() {
  try {
    store.saveConversations(state.conversations);
  } catch (err) {
    showBanner(`Could not keep the conversations in this browser: ${describe(err)}`);
  }
}

function selectConversation(conversation) {
  state.current = conversation;
  store.setCurrentId(conversation ? conversation.id : null);
  renderConversations();
  renderMessages();
}

function newChat() {
  const conversation = store.newConversation();
  state.conversations.unshift(conversation);
  saveConversations();
  selectConversation(conversation);
  $("prompt").focus();
}

function deleteConversation(conversation) {
  if (state.generation && state.generation.conversation === conversation) {
    state.generation.controller.abort();
  }
  state.conversations = state.conversations.filter((c) => c !== conversation);
  saveConversations();
  if (state.current === conversation) selectConversation(state.conversations[0] || null);
  else renderConversations();
}

function renderConversations() {
  drawConversations(state.conversations, state.current, {
    open: selectConversation,
    rename: (conversation, title) => {
      conversation.title = title;
      saveConversations();
      renderConversations();
    },
    remove: deleteConversation,
  });
}

// ---- messages --------------------------------------------------------------------------

function pendingText(message) {
  const model = state.models.find((m) => m.id === message.model);
  return model && model.status !== "loaded" ? `Loading ${model.id}…` : "Thinking…";
}

function viewOf(message, index) {
  const live = state.generation && state.generation.reply === message;
  return messageView(message, index, live ? pendingText(message) : null,
    state.generation ? null : { edit: startEdit, regenerate });
}

function renderMessages() {
  const container = $("messages");
  const conversation = state.current;
  if (!conversation || !conversation.messages.length) {
    container.replaceChildren(el("p", { className: "empty",
      text: "Ask anything. Replies come from the model picked above, on this server only." }));
    return;
  }
  container.replaceChildren(...conversation.messages.map(viewOf));
  container.scrollTop = container.scrollHeight;
}

let frame = 0;
function updateReply() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const generation = state.generation;
    if (!generation || generation.conversation !== state.current) return;
    const index = state.current.messages.indexOf(generation.reply);
    const view = $("messages").querySelector(`[data-index="${index}"]`);
    if (!view) return;
    const container = $("messages");
    const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
    fillBody(view.querySelector(".body"), generation.reply, pendingText(generation.reply));
    view.querySelector(".usage").textContent = usageText(generation.reply);
    if (atBottom) container.scrollTop = container.scrollHeight;
  });
}

function startEdit(message, index, view) {
  editInPlace(view, message, (text) => {
    message.content = text;
    state.current.messages.splice(index + 1);
    generate(state.current);
  }, renderMessages);
}

function regenerate(index) {
  state.current.messages.splice(index);
  generate(state.current);
}

// ---- generation ------------------------------------------------------------------------

function setGenerating(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
}

function requestMessages(conversation, reply) {
  const messages = [];
  const system = String(state.settings.system || "").trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation.messages) {
    if (m === reply || !m.content) continue;
    messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

async function generate(conversation) {
  const model = $("model").value;
  if (!model) {
    showBanner("Pick a model first.");
    return;
  }
  const reply = { role: "assistant", content: "", model };
  const body = { model, messages: requestMessages(conversation, reply) };
  // an empty or odd field is left to the server's default rather than sent as 0 or NaN
  const temperature = parseFloat(state.settings.temperature);
  const maxTokens = parseInt(state.settings.maxTokens, 10);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  if (maxTokens > 0) body.max_tokens = maxTokens;
  conversation.messages.push(reply);
  conversation.updated = Date.now();
  const generation = { controller: new AbortController(), conversation, reply, waiting: true };
  state.generation = generation;
  setGenerating(true);
  renderMessages();
  watchModels();
  const started = performance.now();
  let first = 0;
  let lastSave = started;
  try {
    for await (const chunk of streamChat(body, generation.controller.signal)) {
      if (chunk.usage) reply.usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (!first) first = performance.now();
        generation.waiting = false;
        reply.content += delta.content;
        reply.chunks = (reply.chunks || 0) + 1;
        updateReply();
        if (performance.now() - lastSave > 1000) {
          lastSave = performance.now();
          saveConversations();
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") reply.stopped = true;
    else {
      reply.error = describe(err);
      if (err instanceof ApiError && err.status === 401) askForKey(err.message);
    }
  } finally {
    const ended = performance.now();
    const tokens = reply.usage ? reply.usage.completion_tokens : reply.chunks || 0;
    reply.seconds = (ended - started) / 1000;
    if (tokens > 1 && first && ended > first) {
      reply.tokensPerSecond = ((tokens - 1) * 1000) / (ended - first);
    }
    if (conversation.title === store.NEW_TITLE) {
      const question = conversation.messages.find((m) => m.role === "user");
      if (question) conversation.title = question.content.slice(0, 48);
    }
    state.generation = null;
    setGenerating(false);
    saveConversations();
    renderConversations();
    if (state.current === conversation) renderMessages();
    refreshModels();
  }
}

function send(event) {
  event.preventDefault();
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || state.generation) return;
  if (!state.current) newChat();
  prompt.value = "";
  state.current.messages.push({ role: "user", content: text });
  generate(state.current);
}

// ---- settings and start ----------------------------------------------------------------

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

// Conversations and their thread: the sidebar's open/rename/delete, the messages with Edit and
// Regenerate, and a reply streamed into the open conversation until it ends or Stop aborts it.

import { ApiError, streamChat } from "./api.js";
import { $, el } from "./dom.js";
import { askForKey, refreshModels, watchModels } from "./models.js";
import { renderConversations as drawConversations } from "./sidebar.js";
import { describe, showBanner, state } from "./state.js";
import * as store from "./store.js";
import { editInPlace, fillBody, messageView, usageText } from "./thread.js";

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

export function newChat() {
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

export function renderConversations() {
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

export function renderMessages() {
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
export function updateReply() {
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

export function send(event) {
  event.preventDefault();
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || state.generation) return;
  if (!state.current) newChat();
  prompt.value = "";
  state.current.messages.push({ role: "user", content: text });
  generate(state.current);
}

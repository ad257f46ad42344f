// The model picker (each model's status, loading one on demand, polling while one loads) and
// the API key dialog the server's 401 opens.

import { ApiError, listModels, loadModel } from "./api.js";
import { $, el } from "./dom.js";
import { describe, showBanner, state } from "./state.js";
import * as store from "./store.js";

const STATUS_LABELS = {
  loaded: "ready",
  loading: "loading…",
  unloaded: "not loaded: loads on the first message",
  unloading: "unloading…",
  failed: "failed to load",
};

// Called after each poll of watchModels; the chat sets it to redraw a reply waiting for its model.
let afterPoll = () => {};

export function onModelsPolled(callback) {
  afterPoll = callback;
}

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

export async function refreshModels() {
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
export async function watchModels() {
  if (state.watching) return;
  state.watching = true;
  try {
    const busy = () => state.models.some((m) => m.status === "loading" || m.status === "unloading")
      || (state.generation && state.generation.waiting);
    do {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (!(await refreshModels())) break;
      afterPoll();
    } while (busy());
  } finally {
    state.watching = false;
  }
}

export async function pickModel() {
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

export function askForKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  showBanner(`${reason} Enter an API key to chat.`);
  $("key-input").value = store.apiKey();
  dialog.showModal();
  $("key-input").focus();
}

export async function saveKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  store.setApiKey(key);
  $("api-key").value = key;
  $("key-dialog").close();
  showBanner("");
  await refreshModels();
}

// What the page holds while it runs (models, conversations, the open one, settings, the reply
// streaming now) and its one banner line for what went wrong.

import { $ } from "./dom.js";
import * as store from "./store.js";

export const state = {
  conversations: store.loadConversations(),
  current: null,
  models: [],
  settings: store.loadSettings(),
  generation: null, // {controller, conversation, reply, waiting}
  watching: false,
  modelsFailed: false,
};

export function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

export function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

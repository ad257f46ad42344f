// What the page keeps in this browser (localStorage): conversations, settings, the API key.

const KEYS = {
  conversations: "lokal.conversations",
  current: "lokal.current",
  settings: "lokal.settings",
  apiKey: "lokal.apiKey",
};

export const DEFAULT_SETTINGS = { system: "", temperature: 0.7, maxTokens: 1024, model: "" };
export const NEW_TITLE = "New chat";

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback; // a value another version wrote, or storage switched off
  }
}

function write(key, value) {
  localStorage.setItem(key, typeof value === "string" ? value : JSON.stringify(value));
}

// crypto.randomUUID needs a secure context; a LAN address over plain http is not one.
function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

export function newConversation() {
  return { id: newId(), title: NEW_TITLE, messages: [], updated: Date.now() };
}

export function loadConversations() {
  const list = read(KEYS.conversations, []);
  if (!Array.isArray(list)) return [];
  return list.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages));
}

export function saveConversations(list) {
  write(KEYS.conversations, list);
}

export function currentId() {
  return localStorage.getItem(KEYS.current);
}

export function setCurrentId(id) {
  if (id) write(KEYS.current, id);
  else localStorage.removeItem(KEYS.current);
}

export function loadSettings() {
  const saved = read(KEYS.settings, {});
  return { ...DEFAULT_SETTINGS, ...(saved && typeof saved === "object" ? saved : {}) };
}

export function saveSettings(settings) {
  write(KEYS.settings, settings);
}

export function apiKey() {
  return localStorage.getItem(KEYS.apiKey) || "";
}

export function setApiKey(key) {
  if (key) write(KEYS.apiKey, key);
  else localStorage.removeItem(KEYS.apiKey);
}

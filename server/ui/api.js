// The server's OpenAI API as the page uses it: the key, error envelopes as ApiError, and
// chat completions streamed over SSE. Every call goes to this server (same origin) only.

import { apiKey } from "./store.js";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// {"error": {"message", "type", "param", "code"}}, or whatever a proxy in between answered.
async function failure(response) {
  let message = `The server answered ${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = typeof body.error === "string" ? body.error : body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

// A server that is down or unreachable is said as such, not as a browser's "Failed to fetch".
async function call(url, init) {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `The server did not answer (${err.message}). Is lokal running?`);
  }
}

export async function listModels() {
  const response = await call("/v1/models", { headers: headers() });
  if (!response.ok) throw await failure(response);
  return (await response.json()).data;
}

export async function loadModel(id) {
  const response = await call(`/v1/models/${encodeURIComponent(id)}/load`, {
    method: "POST",
    headers: headers(),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Yields each chunk of a streamed chat completion; aborting `signal` closes the connection,
// which cancels the request on the server. A mid-stream error event is thrown as ApiError.
export async function* streamChat(body, signal) {
  const response = await call("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) {
        throw new ApiError(0, event.error.message || "The reply failed on the server.",
          event.error.code || null);
      }
      yield event;
    }
  }
  throw new ApiError(0, "The connection ended before the reply was complete.");
}

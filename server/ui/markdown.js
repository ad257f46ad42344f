// Model output -> DOM that cannot run: marked renders the markdown, raw HTML in the text is
// shown as text, and DOMPurify removes whatever live markup is left. Without the vendored
// libraries (a checkout where `make ui` has not run) replies are shown as plain text.

let render = null;

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

export async function loadRenderer() {
  try {
    const [{ marked }, { default: DOMPurify }] = await Promise.all([
      import("./vendor/marked.esm.js"),
      import("./vendor/purify.es.js"),
    ]);
    marked.use({
      gfm: true,
      breaks: true,
      renderer: { html: (token) => escapeHtml(token.text) },
    });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    const options = {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe"],
      FORBID_ATTR: ["style"],
    };
    render = (text) => DOMPurify.sanitize(marked.parse(text, { async: false }), options);
    return true;
  } catch (err) {
    console.warn("markdown rendering is off (run `make ui`):", err);
    return false;
  }
}

export function renderMarkdown(element, text) {
  if (render) {
    element.classList.remove("plain");
    element.replaceChildren(render(text));
  } else {
    element.classList.add("plain");
    element.textContent = text;
  }
}

// /docs without a CDN: renders this server's own /openapi.json (every route, its parameters,
// request body fields and responses), with a form per JSON-body route that sends an editable
// example and shows the answer (JSON, text, or an image). serving/transports/page.py says why it exists.
"use strict";

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

let spec = {};
let models = [];  // names from /v1/models, for the example bodies

function resolve(schema) {
  let s = schema || {};
  for (let depth = 0; s.$ref && depth < 20; depth++) {
    s = s.$ref.split("/").slice(1).reduce((node, key) => node && node[key], spec) || {};
  }
  return s;
}

function typeOf(schema) {
  const s = resolve(schema);
  if (s.anyOf || s.oneOf) return (s.anyOf || s.oneOf).map(typeOf).join(" | ");
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.type === "array") return `array of ${typeOf(s.items)}`;
  return s.type || s.title || "any";
}

function limits(schema) {
  const s = resolve(schema);
  const parts = [];
  const plain = (s.anyOf || [s]).map(resolve);
  for (const p of plain) {
    if (p.minimum !== undefined) parts.push(`≥ ${p.minimum}`);
    if (p.exclusiveMinimum !== undefined) parts.push(`> ${p.exclusiveMinimum}`);
    if (p.maximum !== undefined) parts.push(`≤ ${exact(p.maximum)}`);
  }
  if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
  return parts.join(", ");
}

// Integers past 2^53 lose digits in a JS number (2^63 - 1 showed as 9223372036854776000):
// the spec is parsed keeping their source text (JSON.parse's reviver context), shown as written.
const EXACT = new Map();
function keepExact(key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context &&
      /^-?\d+$/.test(context.source)) EXACT.set(value, context.source);
  return value;
}
const exact = (n) => EXACT.get(n) ?? String(n);

// Descriptions are Markdown-ish text: `code` spans become <code>, the rest stays text.
function prose(text, tag = "span") {
  const node = el(tag);
  String(text || "").split(/(`[^`]+`)/).forEach((part) => node.append(
    part.startsWith("`") && part.endsWith("`") && part.length > 1
      ? el("code", { textContent: part.slice(1, -1) }) : part));
  return node;
}

function example(schema) {
  const s = resolve(schema);
  if (s.default !== undefined) return s.default;
  if (s.anyOf) return example(s.anyOf.find((a) => resolve(a).type !== "null") || s.anyOf[0]);
  if (s.enum) return s.enum[0];
  if (s.type === "object" || s.properties) {
    const out = {};
    for (const [name, prop] of Object.entries(s.properties || {})) {
      if ((s.required || []).includes(name)) out[name] = example(prop);
    }
    return out;
  }
  if (s.type === "integer" || s.type === "number") return s.minimum ?? 0;
  if (s.type === "array") return [];
  if (s.type === "boolean") return false;
  return "";
}

function fieldTable(rows) {
  const head = el("tr", {}, ...["name", "in", "type", "limits", "description"].map(
    (h) => el("th", { scope: "col", textContent: h })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows.map((r) => el("tr", {},
    el("td", {}, el("code", { textContent: r.name + (r.required ? " *" : "") })),
    el("td", { textContent: r.where }), el("td", { textContent: r.type }),
    el("td", { textContent: r.limits }), el("td", {}, prose(r.description))))));
}

async function send(method, path, textarea, out) {
  out.replaceChildren(el("p", { textContent: "sending…" }));
  let response;
  try {
    response = await fetch(path, { method, headers: { "Content-Type": "application/json" },
                                   body: textarea ? textarea.value : undefined });
  } catch (error) {
    out.replaceChildren(el("p", { textContent: `cannot reach the server: ${error.message}` }));
    return;
  }
  const type = response.headers.get("content-type") || "";
  const status = el("p", { textContent: `${response.status} ${response.statusText} (${type})` });
  if (type.startsWith("image/")) {
    const img = el("img", { alt: `the ${path} answer` });
    img.src = URL.createObjectURL(await response.blob());
    out.replaceChildren(status, img);
  } else {
    const text = await response.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
    out.replaceChildren(status, el("pre", { textContent: shown.slice(0, 20000) }));
  }
}

function operation(path, method, op) {
  const rows = (op.parameters || []).map((p) => ({ name: p.name, where: p.in,
    required: p.required, type: typeOf(p.schema), limits: limits(p.schema),
    description: p.description || resolve(p.schema).description }));
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const bodySchema = body ? resolve(body.schema) : null;
  if (bodySchema) {
    for (const [name, prop] of Object.entries(bodySchema.properties || {})) {
      rows.push({ name, where: "body", required: (bodySchema.required || []).includes(name),
                  type: typeOf(prop), limits: limits(prop), description: resolve(prop).description });
    }
  }
  const id = `${method}-${path}`.replace(/[^a-z0-9]+/gi, "-");
  const section = el("section", { className: "op", id },
    el("h2", {}, el("span", { className: `method ${method}`, textContent: method }),
       el("code", { textContent: path }), op.summary ? el("span", { textContent: op.summary }) : null),
    op.description ? prose(op.description, "p") : null);
  if (rows.length) section.append(el("h3", { textContent: "fields (* required)" }), fieldTable(rows));
  const answers = Object.entries(op.responses || {}).map(([code, r]) =>
    `${code}: ${r.description || ""} ${Object.keys(r.content || {}).join(", ")}`.trim());
  section.append(el("h3", { textContent: "responses" }), el("pre", { textContent: answers.join("\n") }));
  const canTry = !path.includes("{") && (method === "get" || bodySchema);
  if (canTry) {
    const out = el("div", { className: "answer" });
    out.setAttribute("aria-live", "polite");
    let textarea = null;
    if (bodySchema) {
      const sample = example(bodySchema);
      // A server of several models needs "model" in every /v1 body: name its first one.
      if (bodySchema.properties && bodySchema.properties.model && models.length > 1) {
        sample.model = models[0];
      }
      textarea = el("textarea", { id: `${id}-body`, spellcheck: false,
                                  value: JSON.stringify(sample, null, 2) });
      section.append(el("label", { htmlFor: textarea.id, textContent: "request body (JSON)" }),
                     textarea);
    }
    const button = el("button", { type: "button", textContent: `send ${method.toUpperCase()} ${path}` });
    button.addEventListener("click", () => send(method.toUpperCase(), path, textarea, out));
    section.append(el("p", {}, button), out);
  }
  return section;
}

async function main() {
  const response = await fetch("/openapi.json");
  if (!response.ok) throw new Error(`the server did not give its OpenAPI spec (${response.statusText})`);
  spec = JSON.parse(await response.text(), keepExact);
  const listed = await fetch("/v1/models").then((r) => (r.ok ? r.json() : { models: [] }));
  models = (listed.models || []).map((m) => m.name);
  $title.textContent = `${spec.info.title} ${spec.info.version}: API reference`;
  document.title = $title.textContent;
  $about.textContent = spec.info.description || "";
  const sections = [];
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(item)) sections.push(operation(path, method, op));
  }
  document.getElementById("ops").append(...sections);
  document.body.dataset.rendered = String(sections.length);
}

const $title = document.getElementById("title");
const $about = document.getElementById("about");
main().catch((error) => { document.getElementById("error").textContent = String(error.message || error); });

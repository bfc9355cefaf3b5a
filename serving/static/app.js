// The web page: pick a model (when the server holds several), a class (searchable, combobox.js),
// a truncation psi, a seed; then draw a grid (POST /v1/generate), a psi strip (the same class and
// seed at several psi, one /v1/generate each) or an interpolation to seed B (POST
// /v1/interpolate). The server computes every image. Errors are shown as the server's message
// (422 bodies are turned into "field: reason") under the field at fault, which is marked and
// focused; results are announced through the status live region. Query parameters preset the
// form: ?model= &class= (id or name) &psi= &seed= &size= &psis= &seed_b= &steps= &q= (search
// text, opens the list); auto=1 draws the grid on load, auto=all the grid, strip and
// interpolation (the headless-browser tests use them).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const MAX_STRIP = 12;
let models = [];
let maxImages = 64;
let busy = false;
const picker = new ClassPicker($("class-input"), $("class-list"), $("class-hint"));

// Where a request field is edited, to mark and focus it when the server rejects it.
const FIELDS = { class: "class-input", truncation: "psi", seed: "seed", seed_a: "seed",
                 seed_b: "seed-b", steps: "steps", n: "size", columns: "size", model: "pick" };

class RequestError extends Error {
  constructor(message, field) { super(message); this.field = field; }
}

function setStatus(text) { $("status").textContent = text; }

// The message goes under the field at fault (at the top of the results it was a column away
// from it); a message about no one field stays above the results.
function showError(error) {
  const field = error.field && $(FIELDS[error.field] || error.field);
  const home = field && field.closest("form .field:not([hidden])");
  if (home) {
    field.setAttribute("aria-invalid", "true");
    field.setAttribute("aria-errormessage", "error");
    home.append($("error"));
  } else {
    $("status").after($("error"));
  }
  $("error").textContent = String(error.message || error);
  setStatus("");
  (home ? field : $("error")).focus();
  $("error").scrollIntoView({ block: "nearest" });  // focus alone can leave it below the fold
}

function clearError() {
  $("error").textContent = "";
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

// A readable sentence for a failed response: the server's message, or what the status means.
async function describe(response) {
  const body = await response.json().catch(() => ({}));
  const detail = body.detail ?? body.error;
  if (typeof detail === "string") {
    const field = /^(unknown class|class id)/.test(detail) ? "class"
      : (detail.match(/^(steps|n|seed)[= +]/) || [])[1];
    return new RequestError(detail, field);
  }
  if (Array.isArray(detail) && detail.length) {  // FastAPI's validation errors
    const where = (e) => (e.loc || []).filter((part) => part !== "body").join(".");
    const text = detail.map((e) => `${where(e) || "request"}: ${e.msg}`).join("; ");
    return new RequestError(text, where(detail[0]).split(".")[0]);
  }
  const known = { 404: "the server does not know this model or page",
                  408: "the request took too long to arrive; try again",
                  413: "the request is too large", 503: "the server is busy; try again shortly" };
  return new RequestError(known[response.status] || `the server failed to answer (${response.statusText || response.status})`);
}

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                   body: JSON.stringify(body) });
  } catch (error) {
    throw new RequestError(`cannot reach the server (${error.message}); is it still running?`);
  }
  if (!response.ok) throw await describe(response);
  return response.blob();
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models");
  } catch (error) {
    throw new RequestError(`cannot reach the server (${error.message})`);
  }
  if (!response.ok) throw await describe(response);
  models = (await response.json()).models;
  $("pick").replaceChildren(...models.map((model) => new Option(visibleText(model.name),
                                                                 model.name)));
  $("pick-field").hidden = models.length < 2;
  if (params.has("model")) $("pick").value = params.get("model");
  showModel(true);
}

function currentModel() { return models.find((m) => m.name === $("pick").value) || models[0]; }

function showModel(first) {
  const model = currentModel();
  const meta = model.metadata;
  maxImages = model.max_images;
  $("model").textContent = `${visibleText(model.name)} v${model.version}: ${meta.family}, ` +
    `${meta.num_classes} classes, ${meta.resolution}×${meta.resolution}, ` +
    `step ${meta.training_step}, ${model.provider}`;
  let selected = first ? 0 : Math.min(picker.selected, meta.num_classes - 1);
  if (first && params.has("class")) {
    const wanted = params.get("class");
    const byName = meta.class_names.indexOf(wanted);
    selected = byName >= 0 ? byName : Number(wanted) || 0;
  }
  picker.setNames(meta.class_names, selected);
  $("size").max = String(Math.max(1, Math.floor(Math.sqrt(maxImages))));
  $("steps").max = String(Math.min(maxImages, 16));
  if (meta.recommended_truncation !== null) $("psi").value = String(meta.recommended_truncation);
  if (first) {
    for (const [key, id] of [["psi", "psi"], ["seed", "seed"], ["size", "size"],
                             ["psis", "psis"], ["seed_b", "seed-b"], ["steps", "steps"]]) {
      if (params.has(key)) $(id).value = params.get(key);
    }
    if (params.has("q")) {
      $("class-input").value = params.get("q");
      picker.filter(params.get("q"), true);
    }
  }
  $("psi-value").textContent = $("psi").value;
}

function common() {
  return { model: $("pick").value || undefined, class: picker.selected,
           truncation: Number($("psi").value), seed: Math.max(0, Number($("seed").value) || 0) };
}

// page.css draws an image with hard pixel edges only while it is shown at least at its own size.
const enlargement = new ResizeObserver((entries) => entries.forEach(({ target }) =>
  target.classList.toggle("enlarged", target.clientWidth >= target.naturalWidth)));

function showImage(img, blob) {
  const url = URL.createObjectURL(blob);
  const previous = img.src;
  return new Promise((resolve) => {
    img.onload = () => {
      if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
      img.classList.toggle("enlarged", img.clientWidth >= img.naturalWidth);
      enlargement.observe(img);  // a window resize or the layout can change its shown size
      resolve(url);
    };
    img.src = url;
  });
}

const className = () => picker.names[picker.selected];

async function drawGrid() {
  const c = common();
  const size = Math.min(Math.max(1, Number($("size").value) || 1), Math.floor(Math.sqrt(maxImages)));
  const body = { ...c, n: size * size, columns: size, format: "png" };
  const started = performance.now();
  const url = await showImage($("grid"), await post("/v1/generate", body));
  $("grid-panel").hidden = false;
  $("grid").alt = `${body.n} generated images of class ${c.class} (${className()}), ψ ${c.truncation}`;
  $("grid-caption").textContent = `${className()}, ψ ${c.truncation}, seeds ${c.seed}…${c.seed + body.n - 1}`;
  const link = $("download");
  link.href = url;
  link.download = `bigan-class${c.class}-seed${c.seed}-psi${c.truncation}.png`;
  link.hidden = false;
  document.body.dataset.rendered = "1";
  return `${body.n} images in ${Math.round(performance.now() - started)} ms ` +
         `(seeds ${c.seed}…${c.seed + body.n - 1})`;
}

function parsePsis() {
  const parts = $("psis").value.split(/[\s,;]+/).filter(Boolean);
  if (parts.length === 0) throw new RequestError("ψ values: give at least one number", "psis");
  if (parts.length > MAX_STRIP) throw new RequestError(`ψ values: at most ${MAX_STRIP}`, "psis");
  const { min, max } = $("psi");  // the server's psi range, written into the page (page.py)
  return parts.map((part) => {
    const value = Number(part);
    if (!Number.isFinite(value) || value < Number(min) || value > Number(max)) {
      throw new RequestError(`ψ values: “${part}” is not a number in ${min}–${max}`, "psis");
    }
    return value;
  });
}

async function drawStrip() {
  const c = common();
  const psis = parsePsis();
  const started = performance.now();
  const blobs = await Promise.all(psis.map((psi) => post("/v1/generate",
    { ...c, truncation: psi, n: 1, format: "png" })));
  const figures = await Promise.all(blobs.map(async (blob, k) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = `class ${c.class} (${className()}), seed ${c.seed}, ψ ${psis[k]}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `ψ ${psis[k]}`;
    figure.append(img, caption);
    await showImage(img, blob);
    return figure;
  }));
  $("strip").querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
  $("strip").replaceChildren(...figures);
  $("strip-caption").textContent = `${className()}, seed ${c.seed} at ${psis.length} values of ψ`;
  $("strip-panel").hidden = false;
  return `ψ strip of ${psis.length} images in ${Math.round(performance.now() - started)} ms`;
}

async function drawInterpolation() {
  const c = common();
  const body = { model: c.model, class: c.class, truncation: c.truncation, seed_a: c.seed,
                 seed_b: Number($("seed-b").value), steps: Number($("steps").value),
                 format: "png" };
  const started = performance.now();
  await showImage($("interp"), await post("/v1/interpolate", body));
  $("interp").alt = `${body.steps} images of class ${c.class} (${className()}) moving from ` +
                    `seed ${body.seed_a} to seed ${body.seed_b}`;
  $("interp-caption").textContent = `${className()}, ψ ${c.truncation}: seed ${body.seed_a} → ` +
                                    `seed ${body.seed_b} in ${body.steps} steps`;
  $("interp-panel").hidden = false;
  return `interpolation of ${body.steps} images in ${Math.round(performance.now() - started)} ms`;
}

// One action at a time. The button is marked aria-disabled rather than disabled, so keyboard
// focus stays on it (a disabled button drops focus to the page) and Enter can repeat the action.
async function run(action, button) {
  if (busy) return false;
  busy = true;
  clearError();
  button.setAttribute("aria-disabled", "true");
  $("results").setAttribute("aria-busy", "true");
  setStatus("generating…");
  try {
    const panel = { [drawGrid.name]: "grid-panel", [drawStrip.name]: "strip-panel",
                    [drawInterpolation.name]: "interp-panel" }[action.name];
    setStatus(await action());
    // In the one-column layout (narrow windows) the result is below the form: bring it in view.
    $(panel).scrollIntoView({ block: "nearest" });
    return true;
  } catch (error) {
    showError(error);
    return false;
  } finally {
    busy = false;
    button.removeAttribute("aria-disabled");
    $("results").removeAttribute("aria-busy");
  }
}

$("psi").addEventListener("input", () => { $("psi-value").textContent = $("psi").value; });
$("controls").addEventListener("submit", (e) => { e.preventDefault(); run(drawGrid, $("generate")); });
$("strip-go").addEventListener("click", () => run(drawStrip, $("strip-go")));
$("interp-go").addEventListener("click", () => run(drawInterpolation, $("interp-go")));
$("pick").addEventListener("change", () => showModel(false));
loadModels()
  .then(async () => {
    const auto = params.get("auto");
    if (auto === "1" || auto === "all") await run(drawGrid, $("generate"));
    if (auto === "all") {
      await run(drawStrip, $("strip-go"));
      await run(drawInterpolation, $("interp-go"));
      document.body.dataset.done = "all";
    }
    if (auto) document.body.dataset.scrollWidth = String(document.documentElement.scrollWidth);
  })
  .catch(showError);

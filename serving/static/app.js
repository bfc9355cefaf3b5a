// The web page: pick a model (when the server holds several), a class by name, a truncation psi,
// a seed and a grid size; the server's POST /v1/generate returns one grid PNG. Query parameters
// (?model=&class=&psi=&seed=&size=&auto=1) preset the form, and auto=1 generates on load (used by
// the headless-browser test).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
let maxImages = 64;
let models = [];

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModels() {
  const response = await fetch("/v1/models");
  if (!response.ok) throw new Error(`GET /v1/models: HTTP ${response.status}`);
  models = (await response.json()).models;
  models.forEach((model) => {
    const option = document.createElement("option");
    option.value = option.textContent = model.name;
    $("pick").appendChild(option);
  });
  $("pick-label").hidden = models.length < 2;
  if (params.has("model")) $("pick").value = params.get("model");
  showModel();
}

function showModel() {
  const model = models.find((m) => m.name === $("pick").value) || models[0];
  const meta = model.metadata;
  $("class").replaceChildren();
  maxImages = model.max_images;
  $("model").textContent = `${model.name}: ${meta.family}, ${meta.num_classes} classes, ` +
    `${meta.resolution}×${meta.resolution}, step ${meta.training_step}, ${model.provider}`;
  meta.class_names.forEach((name, id) => {
    const option = document.createElement("option");
    option.value = String(id);
    option.textContent = `${id}: ${name}`;
    $("class").appendChild(option);
  });
  $("size").max = String(Math.max(1, Math.floor(Math.sqrt(maxImages))));
  if (meta.recommended_truncation !== null) $("psi").value = String(meta.recommended_truncation);
  if (params.has("class")) {
    const wanted = params.get("class");
    const byName = meta.class_names.indexOf(wanted);
    $("class").value = byName >= 0 ? String(byName) : wanted;
  }
  for (const key of ["psi", "seed", "size"]) if (params.has(key)) $(key).value = params.get(key);
  $("psi-value").textContent = $("psi").value;
}

async function generate(event) {
  if (event) event.preventDefault();
  const size = Math.min(Number($("size").value) || 1, Math.floor(Math.sqrt(maxImages)));
  const body = { model: $("pick").value || undefined, class: Number($("class").value), n: size * size, columns: size,
                 truncation: Number($("psi").value), seed: Number($("seed").value) || 0,
                 format: "png" };
  setStatus("generating…");
  $("generate").disabled = true;
  try {
    const started = performance.now();
    const response = await fetch("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!response.ok) {
      const detail = await response.json().catch(() => ({}));
      throw new Error(typeof detail.detail === "string" ? detail.detail : `HTTP ${response.status}`);
    }
    const url = URL.createObjectURL(await response.blob());
    const img = $("grid");
    const previous = img.src;
    img.onload = () => {
      if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
      img.style.display = "block";
      document.body.dataset.rendered = "1";
    };
    img.src = url;
    const link = $("download");
    link.href = url;
    link.download = `bigan-class${body.class}-seed${body.seed}-psi${body.truncation}.png`;
    link.hidden = false;
    setStatus(`${body.n} images in ${Math.round(performance.now() - started)} ms ` +
              `(seeds ${body.seed}…${body.seed + body.n - 1})`);
  } catch (error) {
    setStatus(String(error.message || error), true);
  } finally {
    $("generate").disabled = false;
  }
}

$("psi").addEventListener("input", () => { $("psi-value").textContent = $("psi").value; });
$("controls").addEventListener("submit", generate);
$("pick").addEventListener("change", showModel);
loadModels()
  .then(() => { if (params.get("auto") === "1") return generate(); })
  .catch((error) => setStatus(String(error.message || error), true));

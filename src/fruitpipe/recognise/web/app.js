// The fruitpipe page: choose or drop a photo, POST it to /predict, show the top classes as bars
// (or "Not sure: maybe X or Y" when the server answers unknown).
// Plain JavaScript, no framework and nothing fetched from elsewhere: the page works offline.
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function percent(probability) {
  return (100 * probability).toFixed(1) + "%";
}

function renderPredictions(predictions) {
  const list = $("predictions");
  list.replaceChildren();
  for (const { label, probability } of predictions) {
    const item = document.createElement("li");
    item.className = "prediction-item";
    item.dataset.label = label;
    item.dataset.probability = String(probability);
    const row = document.createElement("div");
    row.className = "prediction";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = percent(probability);
    row.append(name, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `${label}: ${percent(probability)}`);
    const fill = document.createElement("span");
    fill.style.width = percent(Math.max(0, Math.min(1, probability)));
    bar.append(fill);
    item.append(row, bar);
    list.append(item);
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status}: ${body.error}`;
  } catch (ignored) { /* not JSON: fall through */ }
  return `${response.status}: ${response.statusText || "request failed"}`;
}

let previewUrl = null;

async function classify(file) {
  clearError();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("preview").alt = `Preview of ${file.name}`;
  $("filename").textContent = file.name;
  $("predictions").replaceChildren();
  $("status").textContent = "Classifying…";
  $("result").hidden = false;
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(`/predict?top_k=${TOP_K}`, { method: "POST", body: form });
  } catch (networkError) {
    $("status").textContent = "";
    showError(`The server could not be reached: ${networkError.message}`);
    return;
  }
  if (!response.ok) {
    $("status").textContent = "";
    $("result").hidden = true;
    showError(`The server refused ${file.name}: ${await errorMessage(response)}`);
    return;
  }
  const body = await response.json();
  renderPredictions(body.predictions);
  $("status").textContent = statusText(body);
  $("status").classList.toggle("unsure", Boolean(body.unknown));
}

// The headline: the best guess, or (below the model's threshold, unlike the training photos, or more likely
// no fruit at all) "Not sure" with the two best guesses.
// Said in words, so it does not depend on colour.
function statusText(body) {
  const [first, second] = body.predictions;
  if (!first) return "No prediction";
  if (body.unknown) {
    const guesses = [first, second].filter(Boolean).map((p) => `${p.label} (${percent(p.probability)})`);
    const why = body.unknown_reason === "not a fruit" ? " (it does not look like a fruit)" : "";
    return `Not sure: maybe ${guesses.join(" or ")}${why}`;
  }
  return `Most likely: ${first.label} (${percent(first.probability)})`;
}

async function showModel() {
  try {
    const response = await fetch("/health");
    if (!response.ok) return;
    const health = await response.json();
    const unsure = typeof health.threshold === "number"
      ? `, "not sure" below ${percent(health.threshold)}` : "";
    $("model").textContent = `Model ${health.model}, ${health.classes.length} classes${unsure}`;
  } catch (ignored) { /* the page still works without this line */ }
}

function setUp() {
  const input = $("file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files.length) classify(input.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  for (const type of ["dragover", "drop"]) {  // a photo dropped beside the zone must not replace the page
    window.addEventListener(type, (event) => event.preventDefault());
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer.files;
    if (files.length) classify(files[0]);
    else showError("Drop a photo file (JPEG or PNG).");
  });
  showModel();
}

document.addEventListener("DOMContentLoaded", setUp);

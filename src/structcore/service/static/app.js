// The inspection page: uploads images to /v1/predict one at a time and shows each result.
"use strict";

const HISTORY_LENGTH = 20;
const MAX_RETRIES = 10;
const state = { token: sessionStorage.getItem("structcore-token") || "", history: [] };
const $ = (selector, root = document) => root.querySelector(selector);

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    askForToken((await response.json()).error);
  }
  return response;
}

function askForToken(message) {
  $("#token-form").hidden = false;
  $("#token-message").textContent = message || "";
  $("#status").textContent = "token needed";
}

function number(value) {
  return Number(value).toPrecision(5);
}

async function loadModel() {
  const response = await api("/v1/model");
  if (!response.ok) {
    return;
  }
  $("#token-form").hidden = true;
  const model = await response.json();
  const select = $("#category");
  select.length = 1;
  for (const c of model.categories) {
    select.add(new Option(c.name, c.name));
  }
  const facts = {
    "package version": model.version,
    weights: `${model.weights.name} (sha256 ${model.weights.sha256})`,
    "decision score": model.decision_score,
    precision: model.precision,
    "queue size": model.limits.queue_size,
  };
  $("#model-facts").replaceChildren(...Object.entries(facts).flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
  $("#model-categories").replaceChildren(...model.categories.map((c) => row([
    c.name, c.train_images, c.bank_size, number(c.thresholds.base), number(c.thresholds.struct),
    number(c.thresholds.hybrid), number(c.lambda),
  ])));
  pollReady();
}

async function pollReady() {
  const response = await api("/readyz");
  if (response.ok) {
    $("#status").textContent = "ready";
    return;
  }
  $("#status").textContent = (await response.json()).error;
  setTimeout(pollReady, 2000);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

async function predict(file, card) {
  const form = new FormData();
  form.append("file", file);
  form.append("category", $("#category").value);
  form.append("overlay", "true");
  form.append("regions", "true");
  for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
    const response = await api("/v1/predict", { method: "POST", body: form });
    const body = await response.json();
    if (response.status !== 503 || attempt === MAX_RETRIES) {
      return response.ok ? body : Promise.reject(new Error(body.error || `HTTP ${response.status}`));
    }
    const wait = Number(response.headers.get("Retry-After") || 1);
    $(".decision", card).textContent = `queue full, retrying in ${wait} s`;
    await sleep(wait);
  }
}

function show(card, result) {
  const decision = $(".decision", card);
  decision.textContent = result.decision;
  decision.className = `decision ${result.decision}`;
  $(".category", card).textContent = `${result.category}${result.routed ? " (routed)" : ""}`;
  $(".score-name", card).textContent = result.decision_score;
  const value = $(".score-value", card);
  value.textContent = number(result.score);
  value.dataset.score = String(result.score);
  $(".threshold-value", card).textContent = number(result.threshold);
  $(".normalised-value", card).textContent = Number(result.normalised_score).toFixed(3);
  const fill = $(".bar-fill", card);
  fill.style.width = `${Math.max(0, Math.min(1, result.normalised_score / 2)) * 100}%`;
  fill.classList.toggle("reject", result.decision === "reject");
  const heatmap = $(".heatmap", card);
  heatmap.src = `data:image/png;base64,${result.overlay_png}`;
  heatmap.style.opacity = $("#opacity").value;
  const t = result.pixel_threshold;
  $(".legend-low", card).textContent = number(0.5 * t);
  $(".legend-mid", card).textContent = `${number(t)} (pixel threshold)`;
  $(".legend-high", card).textContent = number(1.5 * t);
  const [width, height] = result.image_size;
  $(".boxes", card).replaceChildren(...result.regions.map((r) => {
    const box = document.createElement("div");
    Object.assign(box.style, {
      left: `${(100 * r.x0) / width}%`, top: `${(100 * r.y0) / height}%`,
      width: `${(100 * (r.x1 - r.x0)) / width}%`, height: `${(100 * (r.y1 - r.y0)) / height}%`,
    });
    box.title = `area ${r.area} px, peak ${number(r.peak)}`;
    return box;
  }));
  $(".regions", card).textContent = result.regions.length
    ? `${result.regions.length} defect region(s): ` + result.regions.slice(0, 5)
      .map((r) => `(${r.x0},${r.y0})-(${r.x1},${r.y1}) ${r.area} px`).join("; ")
    : "no defect regions above the pixel threshold";
  const ms = result.timings_ms;
  $(".timings", card).textContent =
    `queue ${ms.queue.toFixed(0)} ms, predict ${ms.predict.toFixed(0)} ms, total ${ms.total.toFixed(0)} ms`;
}

function remember(file, result) {
  state.history.unshift([new Date().toLocaleTimeString(), file.name, result.category, result.decision,
    `${number(result.score)} / ${number(result.threshold)}`]);
  state.history.length = Math.min(state.history.length, HISTORY_LENGTH);
  $("#history-rows").replaceChildren(...state.history.map(row));
}

async function inspect(files) {
  for (const file of files) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".file", card).textContent = file.name;
    $(".decision", card).textContent = "scoring…";
    $(".decision", card).classList.add("pending");
    $(".original", card).src = URL.createObjectURL(file);
    $("#results").prepend(card);
    try {
      const result = await predict(file, card);
      show(card, result);
      remember(file, result);
    } catch (error) {
      $(".decision", card).textContent = "error";
      $(".error", card).textContent = error.message;
    }
  }
}

function setUp() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    inspect([...e.dataTransfer.files]);
  });
  $("#file-input").addEventListener("change", (e) => {
    inspect([...e.target.files]);
    e.target.value = "";
  });
  $("#opacity").addEventListener("input", (e) => {
    for (const img of document.querySelectorAll(".heatmap")) {
      img.style.opacity = e.target.value;
    }
  });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) {
        other.classList.toggle("active", other === tab);
        $(`#${other.dataset.view}`).hidden = other !== tab;
      }
    });
  }
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("structcore-token", state.token);
    loadModel();
  });
  loadModel();
}

setUp();

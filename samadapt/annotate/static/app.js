// samadapt annotate: the page. Plain JavaScript, no build step, no network beyond this server.
//
// The image is drawn on #image-canvas in image pixels (the canvas is scaled to fit by CSS); masks,
// prompts and the box being dragged are drawn on #overlay-canvas above it. Every request carries the
// page's token. Requests that change the draft or the file go through one queue, in order.
// More toolbar buttons (the data engine's "Adapt") go into #tools with addTool().
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
  [145, 30, 180], [170, 110, 40], [240, 50, 230], [210, 245, 60], [250, 190, 212],
];
const DRAFT_RGB = [0, 255, 255]; // the mask being drawn: cyan, apart from the category colours
const DRAG_MIN_PX = 4; // screen pixels a press must move to be a box rather than a click

const S = {
  images: [], index: -1, name: null, width: 0, height: 0, img: null, scale: 1,
  categories: [], category: null,
  annotations: [], selected: null, draft: null, draftBits: null, draftLayer: null, baseBits: null, baseLayer: null,
  compare: false, compareAvailable: false, model: "", done: 0, total: 0, doneNames: new Set(),
  embeddingMs: null, cached: false, decodeMs: null, roundTripMs: null,
  press: null, drag: null, queue: Promise.resolve(), pending: 0,
};

// ------------------------------------------------------------------ server
function withToken(path) {
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(withToken(path), init);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : { error: await response.text() };
  if (!response.ok) {
    const detail = data.error || (data.detail ? JSON.stringify(data.detail) : response.statusText);
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function imageUrl(name) {
  return withToken("api/images/" + name.split("/").map(encodeURIComponent).join("/"));
}

// One queue for everything that changes the draft or the file: prompts are applied in order.
function enqueue(task) {
  S.pending += 1;
  document.body.dataset.pending = String(S.pending);
  S.queue = S.queue.then(task).catch(showError).finally(() => {
    S.pending -= 1;
    document.body.dataset.pending = String(S.pending);
  });
  return S.queue;
}

function showError(err) {
  message(String(err.message || err), true);
}

function message(text, isError = false) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// ------------------------------------------------------------------ masks
// Uncompressed COCO RLE runs (column-major, background first) -> row-major 0/1 bytes.
function decodeRuns(runs, w, h) {
  const bits = new Uint8Array(w * h);
  let pos = 0;
  for (let k = 0; k < runs.length; k++) {
    const n = runs[k];
    if (k % 2 === 1) {
      for (let i = pos; i < pos + n; i++) {
        const x = (i / h) | 0;
        bits[(i - x * h) * w + x] = 1;
      }
    }
    pos += n;
  }
  return bits;
}

// A canvas of the image's size with the mask filled (alpha fillAlpha) and its edge opaque.
function maskLayer(bits, w, h, rgb, fillAlpha) {
  const layer = document.createElement("canvas");
  layer.width = w;
  layer.height = h;
  const ctx = layer.getContext("2d");
  const image = ctx.createImageData(w, h);
  const d = image.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!bits[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !bits[i - 1] || !bits[i + 1] || !bits[i - w] || !bits[i + w];
      const k = 4 * i;
      d[k] = rgb[0]; d[k + 1] = rgb[1]; d[k + 2] = rgb[2];
      d[k + 3] = edge ? 255 : fillAlpha;
    }
  }
  ctx.putImageData(image, 0, 0);
  return layer;
}

function iou(a, b) {
  let inter = 0, union = 0;
  for (let i = 0; i < a.length; i++) {
    inter += a[i] & b[i];
    union += a[i] | b[i];
  }
  return union ? inter / union : 1;
}

function categoryIndex(id) {
  return Math.max(0, S.categories.findIndex((c) => c.id === id));
}

function categoryName(id) {
  const c = S.categories.find((c) => c.id === id);
  return c ? c.name : `category ${id}`;
}

function colourOf(id) {
  return PALETTE[categoryIndex(id) % PALETTE.length];
}

// ------------------------------------------------------------------ drawing
function layout() {
  if (!S.width) return;
  const stage = $("stage");
  const width = stage.clientWidth - 16, height = stage.clientHeight - 16, title = 22, gap = 12;
  const fit = (w, h) => Math.min(w / S.width, h / S.height);
  let scale = fit(width, height - title);
  let stacked = false;
  if (S.compare) { // the two panels side by side, or one above the other where that shows them larger
    const side = fit((width - gap) / 2, height - title);
    const above = fit(width, (height - gap) / 2 - title);
    stacked = above > side;
    scale = Math.max(side, above);
  }
  stage.style.flexDirection = stacked ? "column" : "row";
  S.scale = Math.max(0.01, scale);
  const w = `${Math.floor(S.width * S.scale)}px`, h = `${Math.floor(S.height * S.scale)}px`;
  for (const id of ["image-canvas", "overlay-canvas", "base-canvas"]) {
    $(id).style.width = w;
    $(id).style.height = h;
  }
  drawOverlay();
}

function drawPrompts(ctx, prompts) {
  const r = 5 / S.scale;
  ctx.lineWidth = 2 / S.scale;
  for (const p of prompts || []) {
    if (p.box) {
      ctx.strokeStyle = "rgb(255, 215, 0)";
      const [x0, y0, x1, y1] = p.box;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
  for (const p of prompts || []) {
    if (!p.point) continue;
    ctx.beginPath();
    ctx.arc(p.point[0], p.point[1], r, 0, 2 * Math.PI);
    ctx.fillStyle = p.positive ? "rgb(40, 200, 60)" : "rgb(230, 40, 40)";
    ctx.fill();
    ctx.strokeStyle = "white";
    ctx.stroke();
  }
}

function drawOverlay() {
  const c = $("overlay-canvas");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  for (const a of S.annotations) {
    ctx.globalAlpha = a.id === S.selected ? 1 : 0.7;
    ctx.drawImage(a.layer, 0, 0);
  }
  ctx.globalAlpha = 1;
  if (S.draftLayer) ctx.drawImage(S.draftLayer, 0, 0);
  drawPrompts(ctx, S.draft && S.draft.prompts);
  if (S.drag) {
    const [x0, y0] = S.drag.from, [x1, y1] = S.drag.to;
    ctx.setLineDash([6 / S.scale, 4 / S.scale]);
    ctx.strokeStyle = "rgb(255, 215, 0)";
    ctx.lineWidth = 2 / S.scale;
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0) + 1, Math.abs(y1 - y0) + 1);
    ctx.setLineDash([]);
  }
  drawBase();
}

function drawBase() {
  if (!S.compare || !S.img) return;
  const c = $("base-canvas");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(S.img, 0, 0);
  if (S.baseLayer) ctx.drawImage(S.baseLayer, 0, 0);
  drawPrompts(ctx, S.draft && S.draft.prompts);
  let title = `base: ${S.baseName || "(loading)"}`;
  if (S.draft && S.draft.base) {
    if (S.draftBits && S.baseBits) title += ` · IoU with ${S.model} ${iou(S.draftBits, S.baseBits).toFixed(3)}`;
    title += ` · score ${S.draft.base.score.toFixed(3)}`;
  }
  $("base-title").textContent = title;
}

function renderStatus() {
  const parts = [`model ${S.model}`];
  if (S.embeddingMs !== null) parts.push(`embedding ${S.embeddingMs} ms${S.cached ? " (ready in advance)" : ""}`);
  if (S.decodeMs !== null) parts.push(`last decode ${S.decodeMs} ms (round trip ${Math.round(S.roundTripMs)} ms)`);
  parts.push(`images done ${S.done} / ${S.total}`);
  $("status-line").textContent = parts.join(" · ");
  $("main-title").textContent = S.draft ? `${S.model} · score ${S.draft.score.toFixed(3)} · ${S.draft.revision} prompt(s)` : S.model;
}

function renderCategories() {
  const box = $("categories");
  box.textContent = "";
  S.categories.forEach((c, k) => {
    const b = document.createElement("button");
    b.className = "category" + (c.id === S.category ? " active" : "");
    b.dataset.categoryId = c.id;
    b.title = k < 9 ? `key ${k + 1}` : "";
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = k < 9 ? String(k + 1) : "";
    b.append(key, swatch(c.id), c.name);
    b.addEventListener("click", () => chooseCategory(k));
    box.append(b);
  });
  const current = $("current-category");
  current.textContent = "";
  if (S.category !== null) current.append("category ", swatch(S.category), categoryName(S.category));
}

function swatch(categoryId) {
  const sw = document.createElement("span");
  sw.className = "swatch";
  sw.style.background = `rgb(${colourOf(categoryId).join(",")})`;
  return sw;
}

function renderAnnotations() {
  const list = $("annotation-list");
  list.textContent = "";
  for (const a of S.annotations) {
    const li = document.createElement("li");
    li.dataset.annotationId = a.id;
    if (a.id === S.selected) li.className = "selected";
    const sw = swatch(a.category_id);
    const meta = document.createElement("div");
    meta.className = "meta";
    const effort = a.effort ? `${a.effort.clicks} prompt(s), ${a.effort.seconds} s` : "imported";
    meta.textContent = `#${a.id} · ${effort}${a.model ? " · " + a.model : ""}`;
    const del = document.createElement("button");
    del.textContent = "×";
    del.title = "delete (Delete)";
    del.addEventListener("click", (e) => { e.stopPropagation(); deleteAnnotation(a.id); });
    li.append(sw, categoryName(a.category_id), del, meta);
    li.addEventListener("click", () => { S.selected = a.id; renderAnnotations(); drawOverlay(); });
    list.append(li);
  }
}

function render() {
  renderCategories();
  renderAnnotations();
  renderStatus();
  drawOverlay();
}

// ------------------------------------------------------------------ state from the server
function setAnnotation(view) {
  const a = { ...view, bits: decodeRuns(view.mask, S.width, S.height) };
  a.layer = maskLayer(a.bits, S.width, S.height, colourOf(a.category_id), 90);
  const k = S.annotations.findIndex((x) => x.id === a.id);
  if (k >= 0) S.annotations[k] = a; else S.annotations.push(a);
}

function setDraft(view) {
  S.draft = view;
  S.draftBits = S.draftLayer = S.baseBits = S.baseLayer = null;
  if (view) {
    S.draftBits = decodeRuns(view.mask, S.width, S.height);
    S.draftLayer = maskLayer(S.draftBits, S.width, S.height, DRAFT_RGB, 120);
    S.decodeMs = view.decode_ms;
    if (view.base) {
      S.baseName = view.base.name;
      S.baseBits = decodeRuns(view.base.mask, S.width, S.height);
      S.baseLayer = maskLayer(S.baseBits, S.width, S.height, DRAFT_RGB, 120);
    }
  }
  renderStatus();
  drawOverlay();
}

function setProgress(data) {
  if (data.done !== undefined) { S.done = data.done; S.total = data.total; }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be loaded"));
    img.src = url;
  });
}

async function openImage(index) {
  const entry = S.images[index];
  S.index = index;
  S.name = entry.name;
  S.annotations = [];
  S.selected = null;
  S.img = null;
  setDraft(null);
  document.body.dataset.ready = "0";
  for (const id of ["image-canvas", "overlay-canvas", "base-canvas"]) {
    $(id).getContext("2d").clearRect(0, 0, $(id).width, $(id).height);
  }
  document.body.dataset.image = entry.name;
  $("image-name").textContent = entry.name;
  $("image-index").textContent = `${index + 1} / ${S.images.length}`;
  const [img, info] = await Promise.all([loadImage(imageUrl(entry.name)), api("api/open", { image: entry.name, compare: S.compare })]);
  if (S.name !== entry.name) return;
  S.img = img;
  S.width = img.naturalWidth;
  S.height = img.naturalHeight;
  for (const id of ["image-canvas", "overlay-canvas", "base-canvas"]) {
    $(id).width = S.width;
    $(id).height = S.height;
  }
  $("image-canvas").getContext("2d").drawImage(img, 0, 0);
  S.embeddingMs = info.embedding_ms;
  S.cached = info.cached;
  for (const view of info.annotations) setAnnotation(view);
  const flag = $("flag");
  flag.hidden = !info.flag;
  flag.textContent = info.flag ? `This file is flagged: ${info.flag}` : "";
  layout();
  setDraft(info.draft);
  render();
  message("");
  document.body.dataset.ready = "1";
}

// ------------------------------------------------------------------ actions
function go(step) {
  const k = S.index + step;
  if (k < 0 || k >= S.images.length) {
    message(step > 0 ? "this is the last image" : "this is the first image");
    return;
  }
  enqueue(() => openImage(k));
}

function firstToDo() {
  const k = S.images.findIndex((im) => !S.doneNames.has(im.name) && !im.blocked);
  if (k < 0) message("every image has annotations"); else enqueue(() => openImage(k));
}

function sendPrompt(prompt) {
  const name = S.name;
  enqueue(async () => {
    if (name !== S.name) return;
    const t0 = performance.now();
    const r = await api("api/prompt", { image: name, compare: S.compare, ...prompt });
    if (name !== S.name) return;
    S.roundTripMs = performance.now() - t0;
    setDraft(r.draft);
  });
}

function accept() {
  enqueue(async () => {
    if (!S.draft) { message("nothing to accept: drag a box or click on an object first"); return; }
    const r = await api("api/accept", { image: S.name, revision: S.draft.revision, category_id: S.category });
    setAnnotation(r.annotation);
    S.selected = r.annotation.id;
    S.doneNames.add(S.name);
    setProgress(r);
    setDraft(null);
    render();
    message(`saved #${r.annotation.id} (${categoryName(r.annotation.category_id)})`);
  });
}

function chooseCategory(k) {
  const c = S.categories[k];
  if (!c) return;
  S.category = c.id; // the next accept takes it
  renderCategories();
  enqueue(async () => { // decided in turn: after the prompts and accepts given before the key
    if (S.draft || S.selected === null) return; // an object is being drawn: it is its category
    const id = S.selected;
    if (S.annotations.find((a) => a.id === id)?.category_id === c.id) return;
    const r = await api("api/category", { id, category_id: c.id });
    setAnnotation(r.annotation);
    render();
    message(`#${id} is now ${c.name}`);
  });
}

function deleteAnnotation(id) {
  enqueue(async () => {
    const r = await api("api/delete", { id });
    S.annotations = S.annotations.filter((a) => a.id !== id);
    if (S.selected === id) S.selected = null;
    if (!S.annotations.length) S.doneNames.delete(S.name);
    setProgress(r);
    render();
    message(`deleted #${id}`);
  });
}

function draftAction(path) {
  const name = S.name;
  enqueue(async () => {
    const r = await api(path, { image: name, compare: S.compare });
    if (name !== S.name) return;
    setDraft(r.draft);
    if (r.base_name) S.baseName = r.base_name;
    drawBase();
  });
}

function setCompare(on) {
  S.compare = on && S.compareAvailable;
  $("compare-switch").checked = S.compare;
  $("compare-panel").hidden = !S.compare;
  layout();
  if (S.compare && S.name) draftAction("api/draft"); // loads the base model, and its mask for the current prompts
}

function addTool(label, title, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.title = title;
  b.addEventListener("click", onClick);
  $("tools").append(b);
  return b;
}

// ------------------------------------------------------------------ mouse and keys
function imagePixel(e) {
  const r = $("image-canvas").getBoundingClientRect();
  const x = Math.floor(((e.clientX - r.left) * S.width) / r.width);
  const y = Math.floor(((e.clientY - r.top) * S.height) / r.height);
  return [Math.min(Math.max(x, 0), S.width - 1), Math.min(Math.max(y, 0), S.height - 1)];
}

function onMouseDown(e) {
  if (!S.name || document.body.dataset.ready !== "1" || (e.button !== 0 && e.button !== 2)) return;
  e.preventDefault();
  S.press = { button: e.button, shift: e.shiftKey, x: e.clientX, y: e.clientY, at: imagePixel(e) };
}

function onMouseMove(e) {
  const p = S.press;
  if (!p || p.button !== 0) return;
  if (S.drag || Math.hypot(e.clientX - p.x, e.clientY - p.y) > DRAG_MIN_PX) {
    S.drag = { from: p.at, to: imagePixel(e) };
    drawOverlay();
  }
}

function onMouseUp(e) {
  const p = S.press;
  S.press = null;
  if (!p) return;
  if (S.drag) {
    const [x0, y0] = S.drag.from, [x1, y1] = imagePixel(e);
    S.drag = null;
    // the box covers the pixels dragged over: from the first one's corner to past the last one
    sendPrompt({ box: [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1) + 1, Math.max(y0, y1) + 1] });
    return;
  }
  const [x, y] = p.at;
  sendPrompt({ point: [x + 0.5, y + 0.5], positive: !(p.button === 2 || p.shift || e.shiftKey) });
}

function onKey(e) {
  if (e.target instanceof HTMLInputElement && e.target.type === "text") return;
  const key = e.key;
  if ((e.ctrlKey || e.metaKey) && key.toLowerCase() === "z") { e.preventDefault(); draftAction("api/undo"); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const actions = {
    Enter: accept,
    n: () => go(1),
    p: () => go(-1),
    Escape: () => draftAction("api/clear"),
    z: () => draftAction("api/undo"),
    Backspace: () => draftAction("api/undo"),
    Delete: () => { if (S.selected !== null) deleteAnnotation(S.selected); },
    c: () => setCompare(!S.compare),
  };
  if (actions[key]) {
    e.preventDefault();
    actions[key]();
  } else if (/^[1-9]$/.test(key)) {
    e.preventDefault();
    chooseCategory(Number(key) - 1);
  }
}

// ------------------------------------------------------------------ start
async function start() {
  const state = await api("api/state");
  S.images = state.images;
  S.categories = state.categories;
  S.category = state.categories.length ? state.categories[0].id : null;
  S.model = state.model.name;
  S.compareAvailable = state.model.compare;
  S.baseName = state.model.base_name;
  S.doneNames = new Set(state.done_names);
  setProgress(state);
  const label = $("compare-label");
  $("compare-switch").disabled = !S.compareAvailable;
  label.classList.toggle("disabled", !S.compareAvailable);
  if (!S.compareAvailable) label.title = state.model.base_note;
  $("out-file").textContent = `writing ${state.out}`;
  if (state.unreadable.length) {
    const u = $("unreadable");
    u.hidden = false;
    u.textContent = `${state.unreadable.length} unreadable image(s), skipped: ` +
      state.unreadable.map((x) => `${x.name} (${x.reason})`).join("; ");
  }
  render();
  if (!S.images.length) { message("no readable image in the folder", true); return; }
  await openImage(0);
}

const canvas = $("image-canvas");
canvas.addEventListener("mousedown", onMouseDown);
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
window.addEventListener("mousemove", onMouseMove);
window.addEventListener("mouseup", onMouseUp);
document.addEventListener("keydown", onKey);
window.addEventListener("resize", layout);
$("prev-button").addEventListener("click", () => go(-1));
$("next-button").addEventListener("click", () => go(1));
$("todo-button").addEventListener("click", firstToDo);
$("accept-button").addEventListener("click", accept);
$("undo-button").addEventListener("click", () => draftAction("api/undo"));
$("clear-button").addEventListener("click", () => draftAction("api/clear"));
$("compare-switch").addEventListener("change", (e) => setCompare(e.target.checked));
// a button keeps no focus, so Enter and the letter keys always reach the page's handler
document.addEventListener("click", (e) => { if (e.target.closest("button, input")) e.target.closest("button, input").blur(); });
enqueue(start);

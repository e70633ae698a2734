// samadapt annotate: the data engine's "Adapt" button (samadapt/annotate/adapting.py). Starts a run
// that fine-tunes on the annotations made so far in a background process, shows its progress while
// labelling goes on, then the new model's held-out numbers beside the previous model's; "use ..."
// swaps between the two. Uses app.js's helpers (api, addTool, enqueue, openImage, S).
"use strict";

const ADAPT = { timer: null, button: null, swap: null };

function percent(iv) {
  return iv ? `${(100 * iv.mean).toFixed(1)}` : "–";
}

function adaptTable(result) {
  const held = result.split.held_out.length;
  const target = result.scores.new.clicks_per_object.target;
  const rows = [
    ["box mean IoU", (s) => percent(s.box_miou)],
    [`clicks per object to IoU ${target}`, (s) => s.clicks_per_object.mean.toFixed(2)],
    ["never reached", (s) => `${Math.round(100 * s.clicks_per_object.never_reached)}%`],
    ["mean IoU after 1 click", (s) => percent(s.miou_after_1)],
  ];
  const table = document.createElement("table");
  table.id = "adapt-table";
  const head = table.insertRow();
  for (const text of ["", result.name, result.previous]) {
    const th = document.createElement("th");
    th.textContent = text;
    head.append(th);
  }
  for (const [label, value] of rows) {
    const tr = table.insertRow();
    for (const text of [label, value(result.scores.new), value(result.scores.previous)]) tr.insertCell().textContent = text;
  }
  const note = document.createElement("p");
  note.className = "adapt-note";
  note.textContent = `on ${held} held-out labelled image(s) (${result.scores.new.objects} objects), ` +
    `trained on ${result.split.train.length}; cap ${result.scores.new.max_clicks} clicks`;
  return [table, note];
}

function renderAdapt(st) {
  const panel = $("adapt-panel");
  ADAPT.button.disabled = st.state === "running";
  ADAPT.swap.hidden = !st.other || st.state === "running";
  ADAPT.swap.textContent = st.other ? `use ${st.other}` : "";
  document.body.dataset.adapt = st.state;
  const line = document.createElement("p");
  line.id = "adapt-status";
  if (st.state === "running") line.textContent = `adapting (${Math.round(st.seconds)} s): ${st.message}`;
  else if (st.state === "failed") line.textContent = `the run failed; the model is unchanged. ${st.error}`;
  else if (st.state === "done") line.textContent = `${st.result.name} installed (samadapt list); in use: ${st.model}`;
  else line.textContent = "fine-tune on the images labelled so far (4 at least)";
  line.className = st.state === "failed" ? "error" : "";
  panel.replaceChildren(line, ...(st.result ? adaptTable(st.result) : []));
  if (st.model !== S.model) {
    S.model = st.model; // the server dropped the draft, whose logits came from the other model
    if (S.index >= 0) enqueue(() => openImage(S.index));
    renderStatus();
  }
}

async function pollAdapt() {
  clearTimeout(ADAPT.timer);
  try {
    const st = await api("api/adapt");
    renderAdapt(st);
    if (st.state === "running") ADAPT.timer = setTimeout(pollAdapt, 1000);
  } catch (err) {
    showError(err);
    ADAPT.timer = setTimeout(pollAdapt, 3000);
  }
}

async function startAdapt() {
  try {
    renderAdapt(await api("api/adapt", {}));
    ADAPT.timer = setTimeout(pollAdapt, 1000);
  } catch (err) {
    showError(err);
  }
}

function swapAdapt() {
  enqueue(async () => renderAdapt(await api("api/adapt/swap", {})));
}

ADAPT.button = addTool("Adapt", "fine-tune on the annotations made so far, then use the new model", startAdapt);
ADAPT.button.id = "adapt-button";
ADAPT.swap = addTool("", "swap between the new model and the previous one", swapAdapt);
ADAPT.swap.id = "swap-button";
ADAPT.swap.hidden = true;
pollAdapt();

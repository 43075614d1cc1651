// The drawing page: posts the canvas to /api/predict as the user draws and shows the answer.
"use strict";

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];  // one per digit
const PEN_WIDTH = 20;

const pad = document.getElementById("pad");
const padCtx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const mapCanvas = document.getElementById("map");
const mapCtx = mapCanvas.getContext("2d");

let drawing = false, dirty = false, inFlight = false, hasInk = false;
let map = null;           // {points, labels, toCanvas, background} once /api/map answers
let userPoint = null;     // [x, y] in PCA coordinates
let neighbourIndices = [];

// --- the drawing pad -------------------------------------------------------------------
function clearPad() {
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
  userPoint = null;
  neighbourIndices = [];
  showAnswer(null);
  drawMap();
  setStatus("Draw a digit.");
}

function padPosition(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  const [x, y] = padPosition(event);
  padCtx.strokeStyle = "#fff";
  padCtx.fillStyle = "#fff";
  padCtx.lineWidth = PEN_WIDTH;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.beginPath();
  padCtx.arc(x, y, PEN_WIDTH / 2, 0, 2 * Math.PI);
  padCtx.fill();
  padCtx.beginPath();
  padCtx.moveTo(x, y);
  hasInk = true;
  requestPrediction();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  const [x, y] = padPosition(event);
  padCtx.lineTo(x, y);
  padCtx.stroke();
  padCtx.beginPath();
  padCtx.moveTo(x, y);
  requestPrediction();
});

for (const name of ["pointerup", "pointercancel"]) {
  pad.addEventListener(name, () => {
    if (drawing) requestPrediction();
    drawing = false;
  });
}

document.getElementById("clear").addEventListener("click", clearPad);

// --- talking to the server --------------------------------------------------------------
function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// At most one request in flight; strokes drawn meanwhile are sent when it returns.
function requestPrediction() {
  dirty = true;
  if (!inFlight) sendDrawing();
}

async function sendDrawing() {
  if (!hasInk) { dirty = false; return; }
  inFlight = true;
  dirty = false;
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({image: pad.toDataURL("image/png")}),
    });
    const answer = await response.json();
    if (!hasInk) {
      // cleared while the request was out: drop the answer
    } else if (response.ok) {
      showAnswer(answer);
      setStatus("");
    } else if (response.status === 422 && /blank/.test(answer.error || "")) {
      setStatus("Draw a digit.");
    } else {
      setStatus(answer.error || `the server answered ${response.status}`, true);
    }
  } catch (err) {
    setStatus(`no answer from the server (${err.message})`, true);
  } finally {
    inFlight = false;
    if (dirty) sendDrawing();
  }
}

// --- the answer ---------------------------------------------------------------------------
function buildBars() {
  const bars = document.getElementById("bars");
  for (let d = 0; d < 10; d++) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.digit = String(d);
    row.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill">` +
                    `</span></span><span class="pct">&ndash;</span>`;
    bars.appendChild(row);
  }
}

function showAnswer(answer) {
  const top = document.getElementById("top");
  const rows = document.querySelectorAll(".bar");
  rows.forEach((row, d) => {
    const p = answer ? answer.probabilities[d] : 0;
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".pct").textContent = answer ? `${(100 * p).toFixed(1)}%` : "\u2013";
    row.classList.toggle("best", !!answer && d === answer.top);
  });
  if (!answer) {
    top.textContent = "\u2013";
    top.dataset.class = "";
    drawImage(document.getElementById("seen"), null);
    document.getElementById("neighbours").replaceChildren();
    return;
  }
  const best = answer.probabilities[answer.top];
  top.innerHTML = `${answer.top}<small>${(100 * best).toFixed(1)}% sure</small>`;
  top.dataset.class = String(answer.top);
  drawImage(document.getElementById("seen"), answer.image);
  showNeighbours(answer.neighbours);
  userPoint = answer.point;
  neighbourIndices = answer.neighbours.map((n) => n.index);
  drawMap();
  document.body.dataset.answers = String(Number(document.body.dataset.answers || 0) + 1);
}

function drawImage(canvas, pixels) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = pixels ? pixels[i] : 0;
    img.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

function showNeighbours(neighbours) {
  const box = document.getElementById("neighbours");
  box.replaceChildren();
  for (const n of neighbours) {
    const fig = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    drawImage(canvas, n.pixels);
    const caption = document.createElement("figcaption");
    caption.textContent = `${n.label}`;
    caption.style.color = COLOURS[n.label];
    fig.title = `test image ${n.index}, a ${n.label}`;
    fig.append(canvas, caption);
    box.appendChild(fig);
  }
}

// --- the map ------------------------------------------------------------------------------
async function loadMap() {
  const response = await fetch("/api/map");
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  const caption = document.getElementById("map-caption");
  if (!data.available) {
    caption.textContent = `No map: ${data.reason}.`;
    return;
  }
  const pts = data.points;
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of pts) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const margin = 14, size = mapCanvas.width - 2 * margin;
  const scale = size / Math.max(x1 - x0, y1 - y0, 1e-9);  // one scale on both axes
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const toCanvas = ([x, y]) => [mapCanvas.width / 2 + (x - cx) * scale,
                                mapCanvas.height / 2 - (y - cy) * scale];
  const background = document.createElement("canvas");
  background.width = mapCanvas.width;
  background.height = mapCanvas.height;
  const ctx = background.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, background.width, background.height);
  ctx.globalAlpha = 0.75;
  pts.forEach((p, i) => {
    const [u, v] = toCanvas(p);
    ctx.fillStyle = COLOURS[data.labels[i]];
    ctx.beginPath();
    ctx.arc(u, v, 2.6, 0, 2 * Math.PI);
    ctx.fill();
  });
  map = {points: pts, toCanvas, background};
  const legend = document.getElementById("legend");
  COLOURS.forEach((c, d) => {
    const item = document.createElement("span");
    item.style.setProperty("--c", c);
    item.textContent = String(d);
    legend.appendChild(item);
  });
  const pct = data.explained.map((e) => `${(100 * e).toFixed(0)}%`).join(" and ");
  caption.textContent = `Last hidden layer (${data.width} units) of ${pts.length} test images, ` +
    `projected on its first two principal axes (${pct} of the variance). ` +
    "Your digit is the black dot; rings mark its nearest test images.";
  drawMap();
}

function drawMap() {
  if (!map) return;
  mapCtx.drawImage(map.background, 0, 0);
  delete mapCanvas.dataset.user;
  if (!userPoint) return;
  mapCtx.lineWidth = 1.5;
  mapCtx.strokeStyle = "#000";
  for (const i of neighbourIndices) {
    const [u, v] = map.toCanvas(map.points[i]);
    mapCtx.beginPath();
    mapCtx.arc(u, v, 6, 0, 2 * Math.PI);
    mapCtx.stroke();
  }
  const clamp = (t, hi) => Math.min(Math.max(t, 8), hi - 8);  // far-off digits stay in view
  let [u, v] = map.toCanvas(userPoint);
  u = clamp(u, mapCanvas.width);
  v = clamp(v, mapCanvas.height);
  mapCtx.beginPath();
  mapCtx.arc(u, v, 8, 0, 2 * Math.PI);
  mapCtx.fillStyle = "#000";
  mapCtx.fill();
  mapCtx.lineWidth = 2.5;
  mapCtx.strokeStyle = "#fff";
  mapCtx.stroke();
  mapCanvas.dataset.user = `${Math.round(u)},${Math.round(v)}`;
}

buildBars();
clearPad();
loadMap().catch((err) => setStatus(`cannot load the map (${err.message})`, true));

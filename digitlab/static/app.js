// digitlab's draw-a-digit page: plain JavaScript, no libraries, talks to /v1/predict and /v1/read.
"use strict";

const $ = (id) => document.getElementById(id);

// Drawings live in a fixed logical space (what is sent to the server); the canvas backing store
// follows its CSS size and the device pixel ratio so strokes stay sharp on phones.
const MODES = {
  digit: { w: 280, h: 280, line: 18, hint: "Draw a digit here", endpoint: "/v1/predict" },
  field: { w: 840, h: 280, line: 15, hint: "Write a row of digits here", endpoint: "/v1/read" },
};

const state = {
  mode: "digit",
  strokes: [],      // each stroke: array of [x, y] in logical units
  current: null,
  photo: null,      // {file, bitmap, fit: {s, ox, oy}} when a photo is shown instead of a drawing
  seq: 0,           // request counter: answers to older requests are dropped
  inflight: false,
  pending: false,
  timer: 0,
  classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
};

const pad = $("pad");
const overlay = $("overlay");
const ctx = pad.getContext("2d");
const octx = overlay.getContext("2d");

function mode() { return MODES[state.mode]; }

// --- canvas geometry and drawing ---------------------------------------------------------

function resize() {
  const rect = pad.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  for (const c of [pad, overlay]) {
    c.width = Math.max(1, Math.round(rect.width * dpr));
    c.height = Math.max(1, Math.round(rect.height * dpr));
  }
  redraw();
}

function toLogical(ev) {
  const rect = pad.getBoundingClientRect();
  const m = mode();
  return [((ev.clientX - rect.left) / rect.width) * m.w, ((ev.clientY - rect.top) / rect.height) * m.h];
}

function paint(c, scale, withPaper) {
  const m = mode();
  c.save();
  c.setTransform(scale, 0, 0, scale, 0, 0);
  if (withPaper) {
    c.fillStyle = "#fff";
    c.fillRect(0, 0, m.w, m.h);
  } else {
    c.clearRect(0, 0, m.w, m.h);
  }
  if (state.photo) {
    const { bitmap, fit } = state.photo;
    c.drawImage(bitmap, fit.ox, fit.oy, bitmap.width * fit.s, bitmap.height * fit.s);
  }
  c.strokeStyle = "#111";
  c.fillStyle = "#111";
  c.lineCap = "round";
  c.lineJoin = "round";
  c.lineWidth = m.line;
  for (const s of state.strokes) {
    if (s.length === 1) {
      c.beginPath();
      c.arc(s[0][0], s[0][1], m.line / 2, 0, Math.PI * 2);
      c.fill();
      continue;
    }
    c.beginPath();
    c.moveTo(s[0][0], s[0][1]);
    // Quadratic curves through the midpoints: smooth strokes from sparse pointer events.
    for (let i = 1; i < s.length - 1; i++) {
      const mx = (s[i][0] + s[i + 1][0]) / 2;
      const my = (s[i][1] + s[i + 1][1]) / 2;
      c.quadraticCurveTo(s[i][0], s[i][1], mx, my);
    }
    const last = s[s.length - 1];
    c.lineTo(last[0], last[1]);
    c.stroke();
  }
  c.restore();
}

function redraw() {
  paint(ctx, pad.width / mode().w, false);
  const empty = !state.strokes.length && !state.photo;
  $("hint").hidden = !empty;
  $("hint").textContent = mode().hint;
  $("undo").disabled = empty;
  $("clear").disabled = empty;
}

function drawingBlob() {
  const m = mode();
  const off = document.createElement("canvas");
  off.width = m.w;
  off.height = m.h;
  paint(off.getContext("2d"), 1, true);
  return new Promise((resolve) => off.toBlob(resolve, "image/png"));
}

// --- pointer input (mouse, touch and pen alike) ------------------------------------------

pad.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0 && ev.pointerType === "mouse") return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  if (state.photo) {           // drawing starts over on a clean page
    state.photo = null;
    clearOverlay();
  }
  state.current = [toLogical(ev)];
  state.strokes.push(state.current);
  redraw();
});

pad.addEventListener("pointermove", (ev) => {
  if (!state.current) return;
  ev.preventDefault();
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of events.length ? events : [ev]) state.current.push(toLogical(e));
  redraw();
  if (state.mode === "digit") schedule(150);   // live prediction while drawing
});

function endStroke(ev) {
  if (!state.current) return;
  if (ev && pad.hasPointerCapture(ev.pointerId)) pad.releasePointerCapture(ev.pointerId);
  state.current = null;
  schedule(state.mode === "digit" ? 0 : 250);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (state.photo) state.photo = null;
  else state.strokes.pop();
  redraw();
  clearOverlay();
  if (state.strokes.length) schedule(0);
  else showEmpty();
}

function clearAll() {
  state.strokes = [];
  state.photo = null;
  redraw();
  clearOverlay();
  showEmpty();
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
  else if (ev.key === "Escape") clearAll();
});

// --- photos ----------------------------------------------------------------------------

$("file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (!file) return;
  state.strokes = [];
  clearOverlay();
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    bitmap = null;  // the browser cannot show it; the server still says what is wrong with it
  }
  const m = mode();
  const s = bitmap ? Math.min(m.w / bitmap.width, m.h / bitmap.height) : 1;
  state.photo = {
    file,
    bitmap: bitmap || document.createElement("canvas"),
    fit: bitmap ? { s, ox: (m.w - bitmap.width * s) / 2, oy: (m.h - bitmap.height * s) / 2 } : { s: 1, ox: 0, oy: 0 },
  };
  redraw();
  schedule(0);
});

// --- talking to the API ------------------------------------------------------------------

function schedule(delay) {
  clearTimeout(state.timer);
  state.timer = setTimeout(send, delay);
}

async function send() {
  if (!state.strokes.length && !state.photo) return;
  if (state.inflight) { state.pending = true; return; }  // one request at a time; the latest wins
  state.inflight = true;
  const seq = ++state.seq;
  const forMode = state.mode;
  try {
    const blob = state.photo ? state.photo.file : await drawingBlob();
    const form = new FormData();
    form.append("file", blob, state.photo ? state.photo.file.name : "drawing.png");
    const res = await fetch(MODES[forMode].endpoint, { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: "bad_response", detail: `HTTP ${res.status}` }));
    if (seq === state.seq && forMode === state.mode && (state.strokes.length || state.photo)) {
      if (!res.ok) showError(body);
      else if (forMode === "digit") showPrediction(body);
      else showReading(body);
    }
  } catch (e) {
    showError({ detail: "The server cannot be reached; is 'digitlab serve' still running?" });
  } finally {
    state.inflight = false;
    if (state.pending) { state.pending = false; send(); }
  }
}

function setMessage(text, isError) {
  const el = $("message");
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

function showError(body) {
  setMessage(body.detail || body.error || "Something went wrong.", true);
  if (state.mode === "digit") {
    $("digit").textContent = "?";
    $("digit").dataset.state = "error";
    $("confidence").textContent = "No prediction";
    $("unsure").hidden = true;
    $("top3").textContent = "";
    renderBars(null);
  } else {
    $("reading").textContent = "–";
    $("reading").dataset.state = "error";
    $("field-confidence").textContent = "Nothing read";
    $("field-digits").replaceChildren();
  }
  clearOverlay();
}

function pct(p) {
  return p < 0.001 ? "<0.1%" : `${(p * 100).toFixed(1)}%`;
}

function showEmpty() {
  setMessage("");
  $("digit").textContent = "?";
  $("digit").dataset.state = "empty";
  $("confidence").textContent = state.mode === "digit" ? "Draw to predict" : "";
  $("unsure").hidden = true;
  $("top3").textContent = "";
  renderBars(null);
  drawSeen($("seen"), null);
  $("reading").textContent = "–";
  $("reading").dataset.state = "empty";
  $("field-confidence").textContent = "Write a row of digits";
  $("field-digits").replaceChildren();
}

function showPrediction(r) {
  setMessage("");
  const el = $("digit");
  el.textContent = r.class;
  el.dataset.state = r.unsure ? "unsure" : "sure";
  $("confidence").textContent = `${pct(r.confidence)} sure`;
  $("unsure").hidden = !r.unsure;
  $("top3").textContent = "Top 3: " + r.top3.map((t) => `${t.class} ${pct(t.probability)}`).join(" · ");
  renderBars(r);
  drawSeen($("seen"), r.input);
}

function renderBars(r) {
  const bars = $("bars");
  if (!bars.children.length) {
    for (const c of state.classes) {
      const col = document.createElement("div");
      col.className = "bar";
      col.dataset.class = c;
      col.innerHTML = '<span class="p"></span><span class="track"><span class="fill"></span></span><span class="label"></span>';
      col.querySelector(".label").textContent = c;
      bars.appendChild(col);
    }
  }
  [...bars.children].forEach((col, i) => {
    const p = r ? r.probabilities[i] : 0;
    col.querySelector(".fill").style.height = `${Math.max(p * 100, r ? 1 : 0)}%`;
    col.querySelector(".p").textContent = r && p >= 0.01 ? `${Math.round(p * 100)}%` : "";
    col.classList.toggle("best", !!r && i === r.index);
    col.classList.toggle("unsure", !!r && i === r.index && r.unsure);
    col.title = r ? `${state.classes[i]}: ${pct(p)}` : state.classes[i];
  });
}

function drawSeen(canvas, rows) {
  const c = canvas.getContext("2d");
  const h = canvas.height, w = canvas.width;
  const img = c.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = rows ? rows[y][x] : 0;
      const k = (y * w + x) * 4;
      img.data[k] = img.data[k + 1] = img.data[k + 2] = v;
      img.data[k + 3] = 255;
    }
  }
  c.putImageData(img, 0, 0);
}

// --- field mode -------------------------------------------------------------------------

function clearOverlay() {
  octx.setTransform(1, 0, 0, 1, 0, 0);
  octx.clearRect(0, 0, overlay.width, overlay.height);
}

function showReading(r) {
  setMessage(r.unsure_positions.length ? `Unsure at position ${r.unsure_positions.map((i) => i + 1).join(", ")}: check by eye.` : "");
  const reading = $("reading");
  reading.replaceChildren();
  r.digits.forEach((d) => {
    const span = document.createElement("span");
    span.textContent = d.digit;
    if (d.unsure) span.className = "unsure";
    reading.appendChild(span);
  });
  reading.dataset.state = "sure";
  $("field-confidence").textContent = `${r.digits.length} digit${r.digits.length === 1 ? "" : "s"} · whole field ${pct(r.confidence)} sure`;

  const list = $("field-digits");
  list.replaceChildren();
  r.digits.forEach((d) => {
    const item = document.createElement("div");
    item.className = "chip" + (d.unsure ? " unsure" : "");
    const cv = document.createElement("canvas");
    cv.width = 28; cv.height = 28;
    drawSeen(cv, d.input);
    const label = document.createElement("div");
    label.innerHTML = "<b></b><small></small>";
    label.querySelector("b").textContent = d.digit;
    label.querySelector("small").textContent = pct(d.confidence);
    item.append(cv, label);
    list.appendChild(item);
  });

  // Boxes come in the sent image's pixels: a drawing is sent at logical size, a photo as is.
  clearOverlay();
  const scale = overlay.width / mode().w;
  const fit = state.photo ? state.photo.fit : { s: 1, ox: 0, oy: 0 };
  octx.setTransform(scale, 0, 0, scale, 0, 0);
  octx.font = "600 22px system-ui, sans-serif";
  octx.textBaseline = "bottom";
  for (const d of r.digits) {
    const [x0, y0, x1, y1] = d.box.map((v, i) => v * fit.s + (i % 2 ? fit.oy : fit.ox));
    const colour = d.unsure ? "#d97706" : "#2563eb";
    octx.strokeStyle = colour;
    octx.lineWidth = 2.5;
    octx.strokeRect(x0 - 3, y0 - 3, x1 - x0 + 6, y1 - y0 + 6);
    const text = d.digit;
    const tw = octx.measureText(text).width + 10;
    const ty = Math.max(y0 - 4, 26);
    octx.fillStyle = colour;
    octx.fillRect(x0 - 3, ty - 24, tw, 24);
    octx.fillStyle = "#fff";
    octx.fillText(text, x0 + 2, ty - 1);
  }
}

// --- modes and start-up ------------------------------------------------------------------

function setMode(name) {
  if (name === state.mode) return;
  state.mode = name;
  state.seq++;                 // drop answers meant for the other mode
  state.strokes = [];
  state.photo = null;
  for (const [id, m] of [["mode-digit", "digit"], ["mode-field", "field"]]) {
    $(id).classList.toggle("active", m === name);
    $(id).setAttribute("aria-selected", m === name ? "true" : "false");
  }
  $("pad-wrap").className = `pad-wrap ${name}`;
  $("result-digit").hidden = name !== "digit";
  $("result-field").hidden = name !== "field";
  document.body.dataset.mode = name;
  clearOverlay();
  showEmpty();
  resize();
}

$("mode-digit").addEventListener("click", () => setMode("digit"));
$("mode-field").addEventListener("click", () => setMode("field"));
window.addEventListener("resize", resize);

async function loadModel() {
  try {
    const m = await (await fetch("/v1/model")).json();
    state.classes = m.classes;
    $("bars").replaceChildren();
    renderBars(null);
    const acc = m.test_accuracy != null ? ` · ${(m.test_accuracy * 100).toFixed(2)}% on the test set` : "";
    const params = m.parameters >= 1000 ? `${(m.parameters / 1000).toFixed(1)}k` : `${m.parameters}`;
    $("model").textContent = `${m.name} · ${m.dataset}${acc} · ${params} parameters`;
    const digits = m.classes.every((c) => /^\d$/.test(c));
    $("mode-field").hidden = !digits;  // fields of digits need a digit model
    if (!digits) MODES.digit.hint = "Draw here";
    redraw();
  } catch (e) {
    $("model").textContent = "model unavailable";
  }
}

document.body.dataset.mode = "digit";
resize();
showEmpty();
loadModel();

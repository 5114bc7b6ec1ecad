// The sdserve web page: submits jobs to /v1/jobs and follows their event stream.
// Plain JavaScript, no dependencies.
"use strict";

const $ = (selector) => document.querySelector(selector);

const state = {
  mode: "text", // "text" | "inpaint"
  job: null, // {id, url, events_url}
  events: null, // AbortController of the running job's event stream
  startedAt: 0,
  attempt: 1, // the running job's run: a gateway that stops has another run it again
  source: null, // the image being inpainted (HTMLImageElement)
  painting: false,
  redoWhole: false, // inpaint with nothing painted: pressed once, warned; again redoes all
  last: null, // last brush point
  samplerLabels: {}, // sampler id -> what the picker shows ("DPM++ 2M Karras")
};

// ------------------------------------------------------------------ set-up

// The API key, when the gateway wants one: read from its field, never stored.
function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showKeyField() {
  $("#api-key-panel").hidden = false;
  $("#api-key").focus();
}

async function loadInfo() {
  try {
    const response = await fetch("/v1/info");
    const info = await response.json();
    const sizes = info.sizes || [];
    const select = $("#size");
    select.replaceChildren(...sizes.map((size) => new Option(size, size)));
    const limits = info.limits || {};
    if (limits.max_steps) $("#steps").max = limits.max_steps;
    if (limits.default_steps) $("#steps").value = limits.default_steps;
    if (limits.default_guidance_scale !== undefined) {
      $("#guidance").value = limits.default_guidance_scale;
    }
    if (limits.max_images_per_request) $("#n").max = limits.max_images_per_request;
    const samplers = info.samplers || [];
    state.samplerLabels = Object.fromEntries(samplers.map((s) => [s.name, s.label]));
    if (samplers.length) {
      $("#sampler").replaceChildren(
        ...samplers.map((s) => {
          const option = new Option(s.label, s.name);
          option.title = s.description;
          return option;
        }),
      );
    }
    if (limits.default_sampler) $("#sampler").value = limits.default_sampler;
    $("#model-badge").textContent =
      `${info.family} · ${info.topology} · ${info.ready ? "ready" : "loading"}`;
    $("#weights-warning").hidden = !info.random_weights;
    if (info.api_key_required) $("#api-key-panel").hidden = false;
    if (info.example_prompt) $("#prompt").placeholder = info.example_prompt;
    const models = info.models || [];
    $("#model").replaceChildren(...models.map((name) => new Option(name, name)));
    // One model: nothing to pick, so nothing shown.
    $("#model-field").hidden = models.length < 2;
    resizeEditor();
  } catch (error) {
    $("#model-badge").textContent = "gateway unreachable";
    setStatus(`Cannot reach the gateway: ${error}`, "error");
  }
}

function setMode(mode) {
  state.mode = mode;
  $("#mode-text").classList.toggle("active", mode === "text");
  $("#mode-inpaint").classList.toggle("active", mode === "inpaint");
  $("#mode-text").setAttribute("aria-selected", String(mode === "text"));
  $("#mode-inpaint").setAttribute("aria-selected", String(mode === "inpaint"));
  $("#inpaint-panel").hidden = mode !== "inpaint";
  $("#generate").textContent = mode === "inpaint" ? "Inpaint" : "Generate";
  state.redoWhole = false;
}

function setStatus(text, kind = "", detail = "") {
  const status = $("#status");
  status.textContent = text;
  status.className = kind;
  status.title = detail;
}

function setRunning(running) {
  $("#generate").disabled = running;
  $("#cancel").disabled = !running;
  document.body.classList.toggle("running", running);
}

// ----------------------------------------------------------- inpaint editor

function selectedSize() {
  const [width, height] = $("#size").value.split("x").map(Number);
  return { width: width || 64, height: height || 64 };
}

function resizeEditor() {
  const { width, height } = selectedSize();
  const imageCanvas = $("#image-canvas");
  const maskCanvas = $("#mask-canvas");
  if (imageCanvas.width === width && imageCanvas.height === height) return;
  // Keep what was painted, scaled to the new size.
  const old = document.createElement("canvas");
  old.width = maskCanvas.width;
  old.height = maskCanvas.height;
  old.getContext("2d").drawImage(maskCanvas, 0, 0);
  for (const canvas of [imageCanvas, maskCanvas]) {
    canvas.width = width;
    canvas.height = height;
  }
  maskCanvas.getContext("2d").drawImage(old, 0, 0, width, height);
  $("#editor").style.aspectRatio = `${width} / ${height}`;
  drawSource();
}

function drawSource() {
  const canvas = $("#image-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const image = state.source;
  $("#editor").classList.toggle("empty", !image);
  if (!image) return;
  // Cover: fill the canvas, cropping the longer side around the centre.
  const scale = Math.max(canvas.width / image.naturalWidth, canvas.height / image.naturalHeight);
  const w = image.naturalWidth * scale;
  const h = image.naturalHeight * scale;
  context.drawImage(image, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}

function loadSource(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => {
      state.source = image;
      clearMask();
      drawSource();
      resolve();
    };
    image.onerror = () => reject(new Error("not an image the browser can read"));
    image.src = url;
  });
}

function clearMask() {
  const canvas = $("#mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.redoWhole = false;
}

// Whether the image has fully transparent pixels: with no mask, the gateway repaints
// those (OpenAI's rule), so an unpainted edit of such an image is still an inpaint.
function imageHasHoles() {
  const canvas = $("#image-canvas");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] === 0) return true;
  return false;
}

function brushPoint(event) {
  const canvas = $("#mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * canvas.width,
    y: ((event.clientY - rect.top) / rect.height) * canvas.height,
  };
}

function brushWidth() {
  // The slider is in screen pixels of the editor; the canvas may be smaller or larger.
  const canvas = $("#mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return (Number($("#brush").value) * canvas.width) / Math.max(rect.width, 1);
}

function paint(from, to) {
  const context = $("#mask-canvas").getContext("2d");
  context.globalCompositeOperation = $("#erase").checked ? "destination-out" : "source-over";
  context.strokeStyle = "#ff2d6f";
  context.fillStyle = "#ff2d6f";
  context.lineCap = "round";
  context.lineJoin = "round";
  context.lineWidth = brushWidth();
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
  context.beginPath();
  context.arc(to.x, to.y, context.lineWidth / 2, 0, Math.PI * 2);
  context.fill();
}

function setUpBrush() {
  const canvas = $("#mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.source) return;
    state.painting = true;
    state.redoWhole = false;
    canvas.setPointerCapture(event.pointerId);
    state.last = brushPoint(event);
    paint(state.last, state.last);
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.painting) return;
    const point = brushPoint(event);
    paint(state.last, point);
    state.last = point;
  });
  const stop = () => {
    state.painting = false;
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
}

// The mask the API wants: greyscale, white = repaint. Null when nothing is painted.
function maskDataUrl() {
  const canvas = $("#mask-canvas");
  const painted = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const context = out.getContext("2d");
  const pixels = context.createImageData(out.width, out.height);
  let any = false;
  for (let i = 0; i < painted.length; i += 4) {
    const value = painted[i + 3] >= 64 ? 255 : 0;
    any = any || value > 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return any ? out.toDataURL("image/png") : null;
}

// -------------------------------------------------------------------- jobs

function requestBody() {
  const body = {
    prompt: $("#prompt").value.trim(),
    size: $("#size").value,
    n: Number($("#n").value) || 1,
    steps: Number($("#steps").value) || undefined,
    guidance_scale: Number($("#guidance").value),
    sampler: $("#sampler").value || undefined,
    response_format: "b64_json",
  };
  const negative = $("#negative-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  const seed = $("#seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  if (!$("#model-field").hidden && $("#model").value) body.model = $("#model").value;
  if (state.mode === "inpaint") {
    body.kind = "edit";
    body.image = $("#image-canvas").toDataURL("image/png");
    body.strength = Number($("#strength").value);
    const mask = maskDataUrl();
    if (mask) body.mask = mask;
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  if (state.job) return;
  if (!$("#prompt").value.trim()) {
    setStatus("Write a prompt first.", "error");
    $("#prompt").focus();
    return;
  }
  if (state.mode === "inpaint" && !state.source) {
    setStatus("Load an image to inpaint first.", "error");
    return;
  }
  const body = requestBody();
  const holes = body.kind === "edit" && !body.mask && imageHasHoles();
  if (body.kind === "edit" && !body.mask && !holes && !state.redoWhole) {
    // Nothing painted would silently redo every pixel: ask first.
    state.redoWhole = true;
    setStatus(
      "Nothing is painted. Paint the area to repaint, or press Inpaint again to redo the " +
        "whole image (image to image, by strength).",
      "waiting",
    );
    return;
  }
  state.redoWhole = false;
  setRunning(true);
  let submitting = "Submitting…";
  if (holes) submitting = "Submitting (no mask: the image's transparent area is repainted)…";
  else if (body.kind === "edit" && !body.mask) submitting = "Submitting (no mask: the whole image is redone)…";
  setStatus(submitting);
  $("#progress").max = 1;
  $("#progress").value = 0;
  $("#previews").replaceChildren();
  showWarnings([]);
  let response;
  let job;
  try {
    response = await fetch("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    job = await response.json();
  } catch (error) {
    setRunning(false);
    setStatus(`Request failed: ${error}`, "error");
    return;
  }
  if (!response.ok) {
    setRunning(false);
    if (response.status === 401 || response.status === 403) showKeyField();
    const retry = response.headers.get("Retry-After");
    setStatus(errorText(job.error, response.status) + (retry ? ` Retry in ${retry} s.` : ""), "error");
    return;
  }
  state.job = job;
  state.startedAt = performance.now();
  state.attempt = 1;
  $("#job-id").textContent = `job ${job.id}`;
  follow(job);
}

function errorText(error, status) {
  if (!error) return `HTTP ${status}`;
  const param = error.param ? ` (${error.param})` : "";
  return `${error.message}${param}`;
}

// ------------------------------------------------------------------ events

// Events come over fetch() rather than EventSource, which cannot send an Authorization
// header (the gateway may require an API key). Every event has an id. A stream opened
// without a Last-Event-ID header replays the job's events from the start; one opened with
// it continues right after that event, on whichever gateway replica answers. So a dropped
// stream is opened again with the id of the last event seen, and an event already seen
// (a gateway that replays anyway) is skipped. While the gateway cannot be reached or
// answers "retry later" (503: its job store is unreachable; 429, 502, 504), the page waits
// (Retry-After when given) and tries again, for GIVE_UP_MS at most.
const RECONNECTS = 5; // streams in a row that end with no new event
const GIVE_UP_MS = 120_000;
const RETRY_AFTER_CAP_MS = 15_000;
const RETRY_LATER = new Set([429, 502, 503, 504]);

async function follow(job) {
  const controller = new AbortController();
  state.events = controller;
  const seen = new Set(); // ids of the events handled
  let lastId = null; // sent as Last-Event-ID
  let drops = 0; // streams in a row that ended with no new event
  let failures = 0; // attempts in a row that got no stream
  let failingSince = 0; // when they began
  let shown = null; // the status the retry messages replaced
  while (state.events === controller) {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let response;
    let problem = null; // why there is no stream, and how long to wait
    try {
      response = await fetch(job.events_url, { headers, signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) return;
      problem = { text: "The gateway cannot be reached", waitMs: null };
    }
    if (response && response.status === 404) {
      finish();
      setStatus("Lost the job (did the gateway restart?). Submit it again.", "error");
      return;
    }
    if (response && RETRY_LATER.has(response.status)) {
      const body = await response.json().catch(() => ({}));
      problem = { text: errorText(body.error, response.status), waitMs: retryAfterMs(response) };
    } else if (response && !response.ok) {
      const body = await response.json().catch(() => ({}));
      finish();
      setStatus(`Cannot follow the job: ${errorText(body.error, response.status)}`, "error");
      return;
    }
    if (problem) {
      const now = performance.now();
      if (failures++ === 0) failingSince = now;
      const left = GIVE_UP_MS - (now - failingSince);
      if (left <= 0) {
        finish();
        const minutes = GIVE_UP_MS / 60_000;
        const why = sentence(problem.text);
        setStatus(`Gave up following the job after ${minutes} minutes. ${why} Submit it again later.`, "error");
        return;
      }
      const waitMs = Math.min(problem.waitMs ?? Math.min(1000 * failures, 5000), left);
      const status = $("#status");
      shown ??= { text: status.textContent, kind: status.className, detail: status.title };
      setStatus(`${sentence(problem.text)} Trying again in ${Math.ceil(waitMs / 1000)} s…`, "waiting");
      await sleep(waitMs);
      continue;
    }
    failures = 0;
    if (shown !== null) {
      setStatus(shown.text, shown.kind, shown.detail);
      shown = null;
    }
    let news = false;
    try {
      for await (const event of readEvents(response.body)) {
        if (event.id !== null) {
          if (seen.has(event.id)) continue;
          seen.add(event.id);
          lastId = event.id;
        }
        news = true;
        if (handleEvent(event.name, event.data)) return;
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    drops = news ? 1 : drops + 1;
    if (drops > RECONNECTS) break;
    await sleep(500 * drops);
  }
  if (state.events === controller) {
    finish();
    setStatus("Lost the connection to the gateway. Submit the job again.", "error");
  }
}

// "text" as a sentence: with a full stop unless it ends with one already.
const sentence = (text) => (/[.!?…]$/.test(text) ? text : `${text}.`);

// How long a Retry-After header (seconds or an HTTP date) asks to wait, capped; null without one.
function retryAfterMs(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  let seconds = Number(value);
  if (!Number.isFinite(seconds)) seconds = (Date.parse(value) - Date.now()) / 1000;
  if (!Number.isFinite(seconds)) return null;
  return Math.min(Math.max(seconds * 1000, 0), RETRY_AFTER_CAP_MS);
}

// Server-Sent Events from a byte stream: {name, data, id} per event (id null when the event
// has no id line), comments skipped.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment (the gateway's pings)
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && text && !text.includes("\0")) id = text;
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")), id };
    }
  }
}

// Returns true when the job is over.
function handleEvent(name, data) {
  switch (name) {
    case "queued":
      setStatus("Queued…");
      return false;
    case "restarted":
      // The job's gateway stopped; another one runs the job again from the start.
      state.attempt = data.attempt || state.attempt + 1;
      $("#progress").max = Math.max(data.total || 1, 1);
      $("#progress").value = 0;
      $("#previews").replaceChildren();
      setStatus(`Restarted on another gateway (attempt ${state.attempt})…`, "", data.reason || "");
      return false;
    case "progress":
      showProgress(data);
      return false;
    case "preview":
      showPreviews(data);
      return false;
    case "done":
      finish();
      showResult(data.result);
      return true;
    case "cancelled":
      finish();
      setStatus(`Cancelled at step ${data.step} of ${data.total}.`, "cancelled");
      return true;
    case "error":
      finish();
      setStatus(`Failed: ${errorText(data.error)}`, "error");
      return true;
    default:
      return false;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function finish() {
  if (state.events) state.events.abort();
  state.events = null;
  state.job = null;
  setRunning(false);
  $("#previews").replaceChildren();
}

function showProgress({ step, total }) {
  const progress = $("#progress");
  progress.max = Math.max(total, 1);
  progress.value = step;
  const attempt = state.attempt > 1 ? ` (attempt ${state.attempt})` : "";
  setStatus(step >= total ? `Decoding${attempt}…` : `Denoising: step ${step} of ${total}${attempt}`);
}

function showPreviews({ images }) {
  $("#previews").replaceChildren(
    ...images.map((url) => {
      const image = new Image();
      image.src = url;
      image.alt = "preview";
      return image;
    }),
  );
}

async function cancel() {
  if (!state.job) return;
  $("#cancel").disabled = true;
  setStatus("Cancelling…");
  let response;
  try {
    response = await fetch(state.job.url, { method: "DELETE", headers: authHeaders() });
  } catch (error) {
    setStatus(`Cancel failed: ${error}`, "error");
    $("#cancel").disabled = !state.job;
    return;
  }
  // A gateway whose job store is unreachable answers 503: the job runs on; say so.
  if (!response.ok && response.status !== 404 && state.job) {
    const body = await response.json().catch(() => ({}));
    setStatus(`Cancel failed: ${errorText(body.error, response.status)}`, "error");
    $("#cancel").disabled = false;
  }
}

// ----------------------------------------------------------------- results

function showResult(result) {
  const seconds = ((performance.now() - state.startedAt) / 1000).toFixed(2);
  $("#progress").value = $("#progress").max;
  const sampler = state.samplerLabels[result.sampler] || result.sampler;
  setStatus(sampler ? `Done in ${seconds} s (${sampler}).` : `Done in ${seconds} s.`, "done");
  const figures = result.data.map((item, i) => {
    const url = item.url || `data:image/png;base64,${item.b64_json}`;
    const figure = document.createElement("figure");
    const image = new Image();
    image.src = url;
    image.alt = `image ${i + 1}, seed ${item.seed}`;
    const caption = document.createElement("figcaption");
    const seed = document.createElement("button");
    seed.type = "button";
    seed.className = "link seed";
    seed.textContent = `seed ${item.seed}`;
    seed.title = "Use this seed";
    seed.addEventListener("click", () => {
      $("#seed").value = item.seed;
    });
    const download = document.createElement("a");
    download.href = url;
    download.download = `sdserve-${item.seed}.png`;
    download.textContent = "Download";
    const inpaint = document.createElement("button");
    inpaint.type = "button";
    inpaint.className = "secondary inpaint-this";
    inpaint.textContent = "Inpaint this";
    inpaint.addEventListener("click", async () => {
      setMode("inpaint");
      await loadSource(url);
      $("#editor").scrollIntoView({ block: "nearest" });
    });
    caption.append(seed, download, inpaint);
    figure.append(image, caption);
    return figure;
  });
  $("#results").replaceChildren(...figures);
  showWarnings(result.warnings || []);
  showTimings(result.timings || {});
}

// Prompt words the model was not trained on (the response's `warnings`), beside the result.
function showWarnings(warnings) {
  const line = $("#prompt-warnings");
  line.textContent = warnings.map((w) => `Warning: ${w.message}`).join(" ");
  line.hidden = warnings.length === 0;
}

function showTimings(timings) {
  const stages = Object.entries(timings);
  const total = (t) => t.queue_ms + t.compute_ms + t.transfer_ms;
  const longest = Math.max(1, ...stages.map(([, t]) => total(t)));
  const rows = stages.map(([name, t]) => {
    const row = document.createElement("tr");
    const cells = [name.replace("_", " "), t.queue_ms, t.compute_ms, t.transfer_ms].map((v) => {
      const cell = document.createElement("td");
      cell.textContent = typeof v === "number" ? `${v.toFixed(1)} ms` : v;
      return cell;
    });
    const barCell = document.createElement("td");
    barCell.className = "bar-cell";
    const track = document.createElement("div");
    track.className = "bar-track";
    for (const [part, value] of [["queue", t.queue_ms], ["compute", t.compute_ms], ["transfer", t.transfer_ms]]) {
      const bar = document.createElement("span");
      bar.className = `bar ${part}`;
      bar.style.width = `${(100 * value) / longest}%`;
      bar.title = `${part} ${value.toFixed(1)} ms`;
      track.append(bar);
    }
    barCell.append(track);
    row.append(...cells, barCell);
    return row;
  });
  $("#timings-body").replaceChildren(...rows);
  const sum = stages.reduce((acc, [, t]) => acc + total(t), 0);
  $("#timings-total").textContent = `stages: ${sum.toFixed(1)} ms in all`;
  $("#timings").hidden = stages.length === 0;
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#generate-form").addEventListener("submit", submit);
  $("#cancel").addEventListener("click", cancel);
  $("#mode-text").addEventListener("click", () => setMode("text"));
  $("#mode-inpaint").addEventListener("click", () => setMode("inpaint"));
  $("#size").addEventListener("change", resizeEditor);
  $("#clear-mask").addEventListener("click", clearMask);
  $("#random-seed").addEventListener("click", () => {
    $("#seed").value = "";
  });
  $("#image-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    try {
      await loadSource(url);
    } catch (error) {
      setStatus(`Cannot use that file: ${error.message}`, "error");
    }
  });
  for (const [input, label, unit] of [["#brush", "#brush-value", " px"], ["#strength", "#strength-value", ""]]) {
    const update = () => {
      $(label).textContent = `${$(input).value}${unit}`;
    };
    $(input).addEventListener("input", update);
    update();
  }
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#generate-form").requestSubmit();
  });
  setUpBrush();
  setMode("text");
  loadInfo();
});

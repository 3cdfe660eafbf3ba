// defacer web page: upload -> detect -> review -> deface -> verify -> download.
// Talks only to this server's /api (see defacer/web/app.py); never sends data elsewhere.
import { Niivue, SLICE_TYPE, SHOW_RENDER } from "./vendor/niivue/niivue.js";

const FEATURE_COLOURS = { eyes: [230, 40, 40], nose: [40, 200, 60], ears: [40, 120, 255] };
const FEATURE_LABELS = { eyes: 1, nose: 2, ears: 3 };
const $ = (id) => document.getElementById(id);

const state = { config: null, session: null, features: [], busy: false, viewers: {} };
// Exposed read-only for automated browser tests and debugging in the console.
window.defacerViewers = state.viewers;

// ---------- messages ----------
function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  $("error").scrollIntoView({ block: "nearest" });
}
function clearError() { $("error").hidden = true; $("error-text").textContent = ""; }
$("error-close").addEventListener("click", clearError);

function humanBytes(n) {
  const units = ["bytes", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

// ---------- API ----------
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new Error("The defacer server does not answer. Is 'defacer serve' still running?");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `The server answered ${response.status} ${response.statusText}.`);
  }
  return body;
}

function putFile(session, role, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/sessions/${session}/files/${role}`);
    xhr.setRequestHeader("X-File-Name", encodeURIComponent(file.name));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        const error = new Error(body && body.error ? body.error : `Upload of ${file.name} failed (${xhr.status}).`);
        error.status = xhr.status;
        reject(error);
      }
    };
    xhr.onerror = () => reject(new Error(`Upload of ${file.name} failed: the server closed the connection ` +
      "(the file may be larger than the upload limit)."));
    xhr.send(file);
  });
}

// ---------- choosing files ----------
let chosen = { scans: [], labels: null };

function describeChoice() {
  const { scans, labels } = chosen;
  if (!scans.length) { $("chosen").textContent = ""; $("upload-button").disabled = true; return; }
  const total = scans.reduce((s, f) => s + f.size, 0) + (labels ? labels.size : 0);
  const what = scans.length === 1 ? `“${scans[0].name}”` : `${scans.length} files`;
  $("chosen").textContent = `Chosen: ${what} (${humanBytes(total)})` + (labels ? ` and label map “${labels.name}”.` : ".");
  $("upload-button").disabled = state.busy;
}

function chooseScans(files) {
  const list = Array.from(files).filter((f) => !f.name.startsWith("."));
  if (!list.length) return;
  // A detached NRRD header goes first: the server then knows the name of the data file that follows it.
  list.sort((a, b) => Number(b.name.toLowerCase().endsWith(".nhdr")) - Number(a.name.toLowerCase().endsWith(".nhdr")));
  chosen.scans = list;
  describeChoice();
  $("upload-button").focus();
}
$("scan-input").addEventListener("change", (e) => chooseScans(e.target.files));
$("folder-input").addEventListener("change", (e) => chooseScans(e.target.files));
$("labels-input").addEventListener("change", (e) => { chosen.labels = e.target.files[0] || null; describeChoice(); });

const dropzone = $("dropzone");
["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (e) => {
  e.preventDefault(); dropzone.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("over")));
// A dropped folder (a DICOM series) is walked to collect its files.
function readEntry(entry) {
  if (entry.isFile) return new Promise((resolve) => entry.file((file) => resolve([file]), () => resolve([])));
  if (!entry.isDirectory) return Promise.resolve([]);
  const reader = entry.createReader();
  const readBatch = () => new Promise((resolve) => reader.readEntries(resolve, () => resolve([])));
  return (async () => {
    const files = [];
    for (let batch = await readBatch(); batch.length; batch = await readBatch()) {
      for (const child of batch) files.push(...await readEntry(child));
    }
    return files;
  })();
}
dropzone.addEventListener("drop", async (e) => {
  e.preventDefault();
  const entries = Array.from(e.dataTransfer.items || []).map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
    .filter(Boolean);
  if (entries.some((entry) => entry.isDirectory)) {
    const files = [];
    for (const entry of entries) files.push(...await readEntry(entry));
    chooseScans(files);
  } else {
    chooseScans(e.dataTransfer.files);
  }
});
// Never let a file dropped elsewhere replace the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

// ---------- viewers ----------
function labelColormap(enabled, alphaOf) {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const name of ["eyes", "nose", "ears"]) {
    const [r, g, b] = FEATURE_COLOURS[name];
    cm.R.push(r); cm.G.push(g); cm.B.push(b);
    cm.A.push(enabled.includes(name) ? alphaOf : 0);
    cm.I.push(FEATURE_LABELS[name]); cm.labels.push(name);
  }
  return cm;
}

async function makeViewer(canvasId) {
  if (state.viewers[canvasId]) return state.viewers[canvasId];
  const nv = new Niivue({
    backColor: [0.08, 0.08, 0.1, 1],
    show3Dcrosshair: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    dragAndDropEnabled: false,
    isColorbar: false,
    loadingText: "loading…",
    crosshairColor: [1, 1, 0, 0.6],
  });
  await nv.attachToCanvas($(canvasId));
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  nv.setRenderAzimuthElevation(160, 15); // the 3D view looks at the face, slightly from the right
  nv.onError = () => showError("The viewer could not display this scan; the defacing itself still works.");
  state.viewers[canvasId] = nv;
  const box = $(canvasId).parentElement;
  box.addEventListener("keydown", (e) => keyMove(nv, e));
  return nv;
}

function keyMove(nv, e) {
  const moves = {
    ArrowLeft: [-1, 0, 0], ArrowRight: [1, 0, 0], ArrowUp: [0, 0, 1], ArrowDown: [0, 0, -1],
    PageUp: [0, 1, 0], PageDown: [0, -1, 0],
  };
  const m = moves[e.key];
  if (!m) return;
  e.preventDefault();
  nv.moveCrosshairInVox(m[0], m[1], m[2]);
  try {
    const vox = nv.frac2vox(nv.scene.crosshairPos);
    $("viewer-status").textContent = `Crosshair at voxel ${Array.from(vox).map((v) => Math.round(v)).join(", ")}`;
  } catch (err) { /* position text is optional */ }
}

async function showScan(url) {
  state.scanViewUrl = url;
  const nv = await makeViewer("view-before");
  await nv.loadVolumes([{ url, name: "scan.nii.gz" }]);
  setupWindow(nv.volumes[0]);
  applyViewMode();
}

function setupWindow(volume) {
  const lo = volume.global_min ?? volume.robust_min ?? 0;
  const hi = volume.global_max ?? volume.robust_max ?? 1;
  for (const id of ["window-low", "window-high"]) {
    $(id).min = lo; $(id).max = hi; $(id).step = (hi - lo) / 200 || 1;
  }
  $("window-low").value = volume.cal_min; $("window-high").value = volume.cal_max;
}

function applyWindow() {
  let lo = Number($("window-low").value), hi = Number($("window-high").value);
  if (hi <= lo) hi = lo + Number($("window-high").step || 1);
  for (const nv of Object.values(state.viewers)) {
    if (!nv.volumes.length) continue;
    nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi; nv.updateGLVolume();
  }
}
$("window-low").addEventListener("input", applyWindow);
$("window-high").addEventListener("input", applyWindow);

//: 3D view angles: the default looks at the face slightly from the right; "face" straight from the front.
const VIEW_ANGLES = { default: [160, 15], face: [180, 0] };

function applyViewMode() {
  const mode = $("view-mode").value;
  const types = { multi: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL,
    sagittal: SLICE_TYPE.SAGITTAL, render: SLICE_TYPE.RENDER, face: SLICE_TYPE.RENDER };
  const [azimuth, elevation] = VIEW_ANGLES[mode === "face" ? "face" : "default"];
  for (const nv of Object.values(state.viewers)) {
    nv.setSliceType(types[mode]);
    if (mode === "face" || nv.defacerPreset === "face") nv.setRenderAzimuthElevation(azimuth, elevation);
    nv.defacerPreset = mode === "face" ? "face" : "";
  }
}
$("view-mode").addEventListener("change", applyViewMode);

function enabledFeatures() {
  return state.features.filter((name) => $(`feature-${name}`) && $(`feature-${name}`).checked);
}

// One overlay control per viewer: the features on the original (shown), the changed voxels on the defaced
// scan (hidden by default, so that the result itself is what one sees).
const OVERLAY_CONTROL = { "view-before": "overlay-before", "view-after": "overlay-after" };

function applyOverlay() {
  for (const [id, nv] of Object.entries(state.viewers)) {
    const overlay = nv.volumes.find((v) => v.name === "labels.nii.gz" || v.name === "mask.nii.gz");
    if (!overlay) continue;
    const alpha = Math.round(Number($(OVERLAY_CONTROL[id]).value) * 255);
    const enabled = id === "view-before" ? enabledFeatures() : ["eyes", "nose", "ears"];
    overlay.setColormapLabel(labelColormap(enabled, alpha));
    nv.updateGLVolume();
  }
}
$("overlay-before").addEventListener("input", applyOverlay);
$("overlay-after").addEventListener("input", applyOverlay);

async function addOverlay(nv, url, name) {
  while (nv.volumes.length > 1) nv.removeVolumeByIndex(1);
  const overlay = await nv.addVolumeFromUrl({ url, name });
  overlay.setColormapLabel(labelColormap(["eyes", "nose", "ears"], 0));
  applyOverlay();
}

// Flicker: the after viewer shows the original instead of the defaced scan while flipped (button or key F).
async function setFlipped(flipped) {
  const nv = state.viewers["view-after"];
  if (!nv || !nv.volumes.length || !state.viewUrls) return;
  const button = $("flicker-button");
  button.setAttribute("aria-pressed", String(flipped));
  button.textContent = flipped ? "Flip to defaced (F)" : "Flip to original (F)";
  $("after-caption-state").textContent = flipped ? "showing the ORIGINAL" : "showing the defaced scan";
  const base = nv.volumes[0];
  const url = flipped ? state.viewUrls.original : state.viewUrls.defaced;
  if (base.defacerUrl === url) return;
  const overlays = nv.volumes.slice(1).map((v) => v.name);
  await nv.loadVolumes([{ url, name: flipped ? "scan.nii.gz" : "defaced.nii.gz" }]);
  nv.volumes[0].defacerUrl = url;
  if (overlays.includes("mask.nii.gz")) await addOverlay(nv, state.viewUrls.mask, "mask.nii.gz");
  applyWindow();
}
$("flicker-button").addEventListener("click", () =>
  setFlipped($("flicker-button").getAttribute("aria-pressed") !== "true"));
document.addEventListener("keydown", (e) => {
  if ((e.key === "f" || e.key === "F") && !e.ctrlKey && !e.metaKey && !e.altKey &&
      !["INPUT", "SELECT", "TEXTAREA"].includes((e.target && e.target.tagName) || "") &&
      !$("after-figure").hidden) {
    e.preventDefault();
    setFlipped($("flicker-button").getAttribute("aria-pressed") !== "true");
  }
});

// ---------- steps ----------
function setBusy(busy) {
  state.busy = busy;
  $("upload-button").disabled = busy || !chosen.scans.length;
  $("deface-button").disabled = busy;
  document.body.classList.toggle("busy", busy);
}

function progress(rowId, barId, stageId, fraction, text) {
  $(rowId).hidden = false;
  $(barId).value = fraction;
  $(stageId).textContent = text;
}

async function closeSession() {
  if (!state.session) return;
  const id = state.session;
  state.session = null;
  try { await api(`/api/sessions/${id}`, { method: "DELETE" }); } catch (err) { /* already gone */ }
}

async function uploadAndDetect() {
  clearError();
  const files = chosen.scans;
  const total = files.reduce((s, f) => s + f.size, 0) + (chosen.labels ? chosen.labels.size : 0);
  if (state.config && total > state.config.max_upload_bytes) {
    showError(`The chosen files are ${humanBytes(total)}, more than this server's upload limit of ` +
      `${humanBytes(state.config.max_upload_bytes)}. Choose a single series, or restart the server with a larger ` +
      "--max-upload-mb.");
    return;
  }
  setBusy(true);
  resetResults();
  const row = ["upload-progress-row", "upload-progress", "upload-stage"];
  try {
    await closeSession();
    state.session = (await api("/api/sessions", { method: "POST" })).session;
    let done = 0;
    let stored = 0;
    const skipped = [];
    const all = files.map((f) => ["scan", f]).concat(chosen.labels ? [["labels", chosen.labels]] : []);
    for (const [role, file] of all) {
      try {
        await putFile(state.session, role, file, (loaded) =>
          progress(...row, (done + loaded) / total * 0.8, `Uploading… ${humanBytes(done + loaded)} of ${humanBytes(total)}`));
        if (role === "scan") stored += 1;
      } catch (err) {
        // In a folder of DICOM files, skip the odd file that is not DICOM (DICOMDIR, notes); fail otherwise
        // (also for a .nhdr and a data file that is not the one it names).
        const nhdr = files.some((f) => f.name.toLowerCase().endsWith(".nhdr"));
        if (!(role === "scan" && files.length > 1 && !nhdr && err.status === 415)) throw err;
        skipped.push(file.name);
      }
      done += file.size;
    }
    if (!stored) throw new Error("None of the chosen files is a supported scan or DICOM file.");
    if (skipped.length) {
      $("chosen").textContent = `Skipped ${skipped.length} file(s) that are not DICOM: ${skipped.slice(0, 5).join(", ")}` +
        (skipped.length > 5 ? ", …" : "") + ".";
    }
    progress(...row, 0.85, "Reading the scan…");
    const info = await api(`/api/sessions/${state.session}/load`, { method: "POST" });
    $("scan-info").textContent = `${info.name}: ${info.format.toUpperCase()}, ${info.shape.join(" × ")} voxels of ` +
      `${info.spacing_mm.join(" × ")} mm, orientation ${info.axcodes}.`;
    $("step-review").hidden = false;
    // Detection (server) and drawing the scan (browser) run at once; the bar says which is still going.
    const pending = new Set(["detect", "view"]);
    const say = () => {
      const fraction = 0.9 + 0.1 * (2 - pending.size) / 2;
      const text = pending.has("detect") && pending.has("view") ? "Finding the eyes, nose and ears; drawing the scan…"
        : pending.has("detect") ? "Finding the eyes, nose and ears…" : "Features found; drawing the scan in the viewer…";
      progress(...row, fraction, text);
    };
    say();
    const detecting = api(`/api/sessions/${state.session}/detect`, { method: "POST" })
      .then((d) => { pending.delete("detect"); say(); return d; });
    detecting.catch(() => {});  // handled below
    try {
      await showScan(info.view);
    } catch (err) {
      $("viewer-status").textContent = "The viewer cannot show this scan in this browser (it needs WebGL2). " +
        "Defacing and downloads still work.";
    }
    pending.delete("view");
    if (pending.size) say();
    const detection = await detecting;
    showDetection(detection);
    if (state.viewers["view-before"] && state.viewers["view-before"].volumes.length) {
      await addOverlay(state.viewers["view-before"], detection.overlay, "labels.nii.gz");
    }
    progress(...row, 1, "Ready: check the coloured regions, then deface.");
    $("deface-button").focus();
  } catch (err) {
    showError(err.message);
    progress(...row, 0, "Stopped.");
    await closeSession();
    $("step-review").hidden = true;
  } finally {
    setBusy(false);
  }
}
$("upload-button").addEventListener("click", uploadAndDetect);

function showDetection(detection) {
  state.features = Object.keys(detection.features);
  const rows = $("feature-rows");
  rows.replaceChildren();
  for (const [name, f] of Object.entries(detection.features)) {
    const tr = document.createElement("tr");
    const [r, g, b] = FEATURE_COLOURS[name] || [128, 128, 128];
    const found = f.voxels ? `${f.components} region${f.components === 1 ? "" : "s"}, ${f.volume_ml} ml` : "not found";
    const td1 = document.createElement("td");
    const box = document.createElement("input");
    box.type = "checkbox"; box.id = `feature-${name}`; box.checked = true; box.addEventListener("change", applyOverlay);
    td1.append(box);
    const td2 = document.createElement("td");
    const label = document.createElement("label");
    label.htmlFor = box.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = `rgb(${r},${g},${b})`;
    label.append(swatch, document.createTextNode(" " + name));
    td2.append(label);
    const td3 = document.createElement("td"); td3.textContent = found;
    tr.append(td1, td2, td3);
    rows.append(tr);
  }
  const fromLabels = String(detection.detector).startsWith("the uploaded label map");
  $("detector-name").textContent = fromLabels ? "Taken from your label map (details)"
    : "Found automatically by defacer's detector (details)";
  $("detector-technical").textContent = `Technical name: ${detection.detector}.`;
  fillList("detect-warnings", detection.warnings || []);
}

function fillList(id, items) {
  const list = $(id);
  list.replaceChildren(...items.map((text) => { const li = document.createElement("li"); li.textContent = text; return li; }));
}

async function deface() {
  clearError();
  const features = enabledFeatures();
  if (!features.length) { showError("Tick at least one feature to distort."); return; }
  if (!state.session) { showError("Upload a scan first."); return; }
  setBusy(true);
  const row = ["deface-progress-row", "deface-progress", "deface-stage"];
  try {
    let job = await api(`/api/sessions/${state.session}/deface`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ features, seed: 0, retry_stronger: $("retry-stronger").checked }),
    });
    const started = Date.now();
    while (job.state === "queued" || job.state === "running") {
      // A queue wait shorter than a second is not news: say "Starting" rather than flash "Waiting for a worker".
      const stage = job.state === "queued" && Date.now() - started < 1500 ? "Starting" : job.stage;
      progress(...row, job.progress, `${stage}…`);
      await new Promise((resolve) => setTimeout(resolve, 400));
      job = await api(`/api/sessions/${state.session}/job`);
    }
    if (job.state === "failed") throw new Error(job.error || "Defacing failed.");
    progress(...row, 1, "Done.");
    await showResult(job.result);
  } catch (err) {
    $("deface-progress-row").hidden = true;  // no bar left half-way through a stage that stopped
    showError(err.message);
  } finally {
    setBusy(false);
  }
}
$("deface-button").addEventListener("click", deface);

async function showResult(result) {
  $("step-result").hidden = false;
  const changed = Object.entries(result.voxels_changed).map(([k, v]) => `${k} ${v.toLocaleString()}`).join(", ");
  $("changed").textContent = `Voxels changed: ${changed}.`;
  fillList("result-warnings", result.warnings || []);
  showVerification(result.verification);
  const labels = { scan: "Defaced scan", mask: "Mask of the changed voxels", labels: "Detected feature labels",
    report: "Report", provenance: "Provenance record (JSON)" };
  const list = $("downloads");
  list.replaceChildren();
  for (const [kind, filename] of Object.entries(result.downloads)) {
    if (kind === "provenance" && result.downloads.report === filename) continue;
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/api/sessions/${state.session}/download/${kind}`;
    a.download = filename; a.id = `download-${kind}`;
    a.textContent = `${labels[kind] || kind}: ${filename}`;
    li.append(a); list.append(li);
  }
  $("after-figure").hidden = false;
  state.viewUrls = {
    original: state.scanViewUrl,
    defaced: `/api/sessions/${state.session}/view/defaced.nii.gz`,
    mask: `/api/sessions/${state.session}/view/mask.nii.gz`,
  };
  $("flicker-button").setAttribute("aria-pressed", "false");
  $("flicker-button").textContent = "Flip to original (F)";
  $("after-caption-state").textContent = "showing the defaced scan";
  try {
    const nv = await makeViewer("view-after");
    await nv.loadVolumes([{ url: state.viewUrls.defaced, name: "defaced.nii.gz" }]);
    nv.volumes[0].defacerUrl = state.viewUrls.defaced;
    await addOverlay(nv, state.viewUrls.mask, "mask.nii.gz");
    applyWindow(); applyViewMode();
    const before = state.viewers["view-before"];
    if (before && before.broadcastTo) before.broadcastTo([nv], { "2d": true, "3d": true });
  } catch (err) {
    $("viewer-status").textContent = "The defaced scan cannot be shown in this browser; downloads still work.";
  }
  $("step-result").scrollIntoView({ block: "start" });
  const first = $("downloads").querySelector("a");
  if (first) first.focus();
}

function yesNo(value) {
  if (Array.isArray(value)) return value.length ? `yes (${value.join(", ")})` : "no";
  return value === true ? "yes" : value === false ? "no" : "unknown";
}

// "front:facemesh" (view:detector, defacer.verify.check) -> "facemesh on the front render".
function describeFound(found) {
  return found.map((f) => {
    const [view, name] = String(f).split(":");
    return name ? `${name} on the ${view} render` : view;
  }).join(", ");
}

// After a retry (the box next to the deface button): every attempt, in words.  The retry goes one step stronger
// while a face is found (defacer.options.stronger_options): the larger nose removal and eye cover, then the whole
// face in front of the eyes as well.
const ORDINALS = ["first", "second", "third", "fourth", "fifth"];

function ordinal(i) {
  return ORDINALS[i] || `${i + 1}th`;
}

function attemptOutcome(a) {
  if (!a.verdict) return "could not be verified";
  const found = (a.face_found_after || []).length
    ? `: a face was still found (face detectors that fired: ${describeFound(a.face_found_after)})` : "";
  return `was verified ${a.verdict}${found}`;
}

function describeStep(before, after) {
  const sizes = before.nose_scale !== after.nose_scale || before.eye_box_scale !== after.eye_box_scale;
  const larger = sizes ? `with a larger nose removal and eye cover (nose size ${before.nose_scale} to ` +
    `${after.nose_scale}, eye size ${before.eye_box_scale} to ${after.eye_box_scale})` : "";
  const whole = after.whole_face && !before.whole_face
    ? "with the whole face in front of the eyes removed as well" : "";
  return [larger, whole].filter(Boolean).join(", and ") || "with the same options";
}

function showAttempts(v) {
  const note = $("retry-note");
  const attempts = (v && v.attempts) || [];
  note.hidden = attempts.length < 2;
  note.textContent = "";
  if (note.hidden) return;
  const parts = [`The scan was defaced ${attempts.length} times, each time from the original. ` +
    `The first defacing ${attemptOutcome(attempts[0])}.`];
  for (let i = 1; i < attempts.length; i += 1) {
    parts.push(`So it was defaced again ${describeStep(attempts[i - 1], attempts[i])}, and this ${ordinal(i)} ` +
      `attempt ${attemptOutcome(attempts[i])}.`);
  }
  parts.push(`The verdict, views and downloads on this page are the ${ordinal(attempts.length - 1)} attempt's.`);
  note.textContent = parts.join(" ");
}

function showVerification(v) {
  showAttempts(v);
  const verdict = $("verdict");
  const scores = $("scores");
  const body = scores.querySelector("tbody");
  body.replaceChildren();
  scores.hidden = true;
  $("verdict-rule-box").hidden = true;
  $("report-link").hidden = true;
  $("next-step").hidden = true;
  $("next-step").textContent = "";
  verdict.className = "verdict";
  if (!v || !v.available) {
    verdict.classList.add("unknown");
    verdict.textContent = `Verification unavailable: ${(v && v.reason) || "not installed"}`;
    return;
  }
  if (v.passed === null || v.passed === undefined) {
    verdict.classList.add("unknown");
    verdict.textContent = `Verification could not be completed: ${v.error || "unknown reason"}`;
    return;
  }
  const s = v.summary || {};
  // Three verdicts, as in the report and the command line (defacer.verify.verdict).
  const name = v.verdict || s.verdict || (v.passed ? "PASS" : "FAIL");
  const meanings = {
    PASS: "A face was found in the original's renders and none after defacing; the brain region is untouched.",
    FAIL: "A face was still found after defacing, or the brain region changed. Do not share this scan.",
    INCONCLUSIVE: "No face was found in the original's renders either, so the check had nothing to test. " +
      "Look at the pictures before sharing this scan.",
  };
  verdict.classList.add(name.toLowerCase());
  verdict.dataset.verdict = name;
  verdict.textContent = `${name}: ${v.meaning || meanings[name] || ""}`;
  const identity = s.identity && typeof s.identity.distance === "number" ? s.identity.distance.toFixed(3) : "n/a";
  const rows = [
    ["Verdict", name],
    ["Face found in renders of the original", yesNo(s.face_found_before)],
    ["Face found in renders of the defaced scan", yesNo(s.face_found_after)],
    ["Brain region untouched", yesNo(s.brain_untouched)],
    ["Identity distance, original vs defaced (dlib; 0 is the same picture, renders of two different people " +
     "are typically 0.3 to 0.6)", identity],
  ];
  for (const [key, value] of rows) {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.scope = "row"; th.textContent = key;
    const td = document.createElement("td"); td.textContent = String(value);
    tr.append(th, td); body.append(tr);
  }
  // After a FAIL, what to do next (defacer.verify.verdict.remedy, worded for this page by the server).
  $("next-step").textContent = v.next_step || "";
  $("next-step").hidden = !v.next_step;
  $("verdict-rule").textContent = s.rule || "";
  $("verdict-rule-box").hidden = !s.rule;
  scores.hidden = false;
  if (v.report) {
    $("report-link").href = `/api/sessions/${state.session}/report`;
    $("report-link").hidden = false;
  }
}

// For the page's own browser tests (three verdict states); harmless otherwise.
window.defacerShowVerification = showVerification;

function resetResults() {
  $("step-result").hidden = true;
  $("after-figure").hidden = true;
  $("overlay-after").value = "0";
  state.viewUrls = null;
  $("deface-progress-row").hidden = true;
  const after = state.viewers["view-after"];
  if (after) while (after.volumes.length) after.removeVolumeByIndex(0);
}

async function finish() {
  await closeSession();
  resetResults();
  $("step-review").hidden = true;
  $("upload-progress-row").hidden = true;
  chosen = { scans: [], labels: null };
  for (const id of ["scan-input", "folder-input", "labels-input"]) $(id).value = "";
  describeChoice();
  $("chosen").textContent = "Your files were deleted from the server.";
  $("scan-input").focus();
}
$("finish-button").addEventListener("click", finish);
$("again-button").addEventListener("click", finish);

window.addEventListener("pagehide", () => {
  if (state.session) navigator.sendBeacon(`/api/sessions/${state.session}/close`);
});

async function init() {
  try {
    state.config = await api("/api/config");
    $("limit").textContent = humanBytes(state.config.max_upload_bytes);
    $("version").textContent = state.config.version;
    if (!state.config.verify.available) {
      $("verdict").textContent = `Verification unavailable: ${state.config.verify.reason}`;
      // the retry is decided by the verification: without it there is nothing to decide on
      $("retry-stronger").checked = false;
      $("retry-stronger").disabled = true;
    }
  } catch (err) {
    showError(err.message);
  }
  document.body.dataset.ready = "true";
}
init();

// The active-learning page: a label set (saved on the server answer by answer), label propagation
// as a /ml/propagate job, the next spectra to answer by query_rank, the map to label by clicking, and
// the candidates sent to TOPCAT or Aladin over SAMP.
"use strict";

const LabelPage = (() => {
  const base = LV.base;
  const CANDIDATES = 8;
  const UNCLASSED = ["not sure", "bad"];
  let set = null; // the label set as /explore/labelsets gives it
  let result = null; // the last propagation: {label, probability, rank, accuracy} by DID
  let points = null; // the map: {id, target, x, y}
  let chosen = null; // a spectrum clicked on the map, answered first
  const status = () => document.getElementById("label-status");

  const jsonPost = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const api = (path = "", init = undefined) => LV.json(`${base}/explore/labelsets${path}`, init);

  async function start() {
    document.getElementById("create").addEventListener("click", () => guarded(create));
    document.getElementById("start-table").addEventListener("change", (e) => guarded(() => createFromTable(e.target.files[0])));
    document.getElementById("update").addEventListener("click", () => guarded(update));
    document.getElementById("send-candidates").addEventListener("click", () => guarded(sendCandidates));
    document.getElementById("add-class").addEventListener("click", () => guarded(addClass));
    document.getElementById("more-table").addEventListener("change", (e) => guarded(() => addTable(e.target.files[0])));
    document.getElementById("label-map").addEventListener("click", pick);
    try {
      points = await LV.json(`${base}/explore/map`);
      const id = LV.params.get("set");
      if (id) {
        set = await api(`/${encodeURIComponent(id)}`);
        if (set.last_job) await loadResult(set.last_job);
      }
      render();
    } catch (error) {
      LV.say(status(), error.message, true);
      document.getElementById("start").hidden = false;
    } finally {
      document.body.dataset.labelReady = "true";
    }
  }

  /** Run an action, saying its error in the status line instead of throwing. */
  async function guarded(action) {
    document.body.dataset.labelBusy = "true";
    try {
      await action();
    } catch (error) {
      LV.say(status(), error.message, true);
    } finally {
      document.body.dataset.labelBusy = "false";
    }
  }

  async function create() {
    const names = document.getElementById("class-names").value.split(",").map((s) => s.trim()).filter(Boolean);
    opened(await api("", jsonPost({ classes: names })));
  }

  async function createFromTable(file) {
    if (!file) return;
    const made = await api("", jsonPost({ classes: [] }));
    set = made;
    await addTable(file);
    opened(set);
  }

  function opened(found) {
    set = found;
    history.replaceState(null, "", `${location.pathname}?set=${encodeURIComponent(set.id)}`);
    LV.say(status(), "label set saved: answer a few spectra (click the map), then press update");
    render();
  }

  async function addTable(file) {
    if (!file) return;
    const form = new FormData();
    form.set("labels", file, file.name);
    set = await api(`/${set.id}/answers`, { method: "POST", body: form });
    LV.say(status(), `${Object.values(set.counts).reduce((a, b) => a + b, 0)} answers in the set`);
    render();
  }

  async function addClass() {
    const input = document.getElementById("new-class");
    const name = input.value.trim();
    if (!name || set.classes.includes(name)) return;
    set.classes = [...set.classes, name];
    input.value = "";
    render();
  }

  async function answer(did, label) {
    set = await api(`/${set.id}/answers`, jsonPost({ answers: [{ obs_publisher_did: did, label }] }));
    if (chosen === did) chosen = null;
    LV.say(status(), `saved: ${label}`);
    render();
  }

  /** One round: the set's class answers to /ml/propagate, the job counted in the set, its result shown. */
  async function update() {
    LV.say(status(), "propagating the labels …");
    const labels = await (await fetch(`${base}/explore/labelsets/${set.id}/labels.csv`)).text();
    const form = new FormData();
    form.set("UPLOAD", "labels,param:labels");
    form.set("labels", new Blob([labels], { type: "text/csv" }), "labels.csv");
    form.set("RESPONSEFORMAT", "votable/td");
    const job = await LV.uwsJob(`${base}/ml/propagate`, form);
    set = await api(`/${set.id}/rounds`, jsonPost({ job }));
    await loadResult(job);
    LV.say(status(), `round ${set.rounds} done`);
    render();
  }

  async function loadResult(job) {
    const table = await LV.votable(`${job}/results/result`);
    const ids = table.column("obs_publisher_did");
    const label = table.column("label");
    const probability = table.column("probability");
    const rank = table.column("query_rank");
    result = { job, by: new Map(), accuracy: table.infos.cv_accuracy ? table.infos.cv_accuracy.value : "" };
    ids.forEach((id, i) => result.by.set(id, { label: label[i], probability: probability[i], rank: rank[i] }));
  }

  /** The next spectra to ask about: by query rank, none already answered. */
  function candidates() {
    if (!result) return [];
    return [...result.by.entries()]
      .filter(([id, r]) => r.rank !== null && !(id in answers()))
      .sort((a, b) => a[1].rank - b[1].rank)
      .slice(0, CANDIDATES)
      .map(([id]) => id);
  }

  const answers = () => Object.fromEntries(set.answers.map((a) => [a.obs_publisher_did, a.label]));

  async function sendCandidates() {
    const ids = candidates();
    const url = await LV.tapJob(
      "SELECT o.obs_publisher_did, o.target_name, o.s_ra, o.s_dec, o.teff, o.logg, o.feh, o.access_url " +
      "FROM TAP_UPLOAD.candidates AS c JOIN ivoa.obscore AS o ON o.obs_publisher_did = c.obs_publisher_did",
      { candidates: LV.didTable(ids) });
    await LV.samp.sendTable(url, `latentvo: ${ids.length} spectra to label (round ${set.rounds})`);
    LV.say(status(), `sent ${ids.length} candidates`);
  }

  // -- drawing ---------------------------------------------------------------------------------------

  function render() {
    document.getElementById("start").hidden = Boolean(set);
    document.getElementById("work").hidden = !set;
    if (!set) return;
    document.getElementById("round").textContent = `round ${set.rounds}`;
    document.getElementById("counts").textContent = Object.entries(set.counts).map(([k, n]) => `${k}: ${n}`).join(", ");
    document.getElementById("accuracy").textContent = result && result.accuracy
      ? `cross-validated accuracy ${(100 * Number(result.accuracy)).toFixed(0)} % (5-fold, on your labels)`
      : "no cross-validated accuracy yet (it needs 10 labels or more)";
    document.getElementById("labels-csv").href = `${base}/explore/labelsets/${set.id}/labels.csv`;
    document.getElementById("set-link").href = location.href;
    document.getElementById("send-candidates").disabled = !candidates().length;
    drawMap();
    drawCandidates();
  }

  function classColour(name) {
    const i = set.classes.indexOf(name);
    if (i < 0) return "rgb(190,190,190)";
    const [r, g, b] = LV.CATEGORICAL[i % LV.CATEGORICAL.length];
    return `rgb(${Math.round(r * 255)},${Math.round(g * 255)},${Math.round(b * 255)})`;
  }

  function layout(canvas) {
    const xs = points.x, ys = points.y;
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const pad = 12;
    return (i) => [
      pad + ((xs[i] - x0) / (x1 - x0 || 1)) * (canvas.width - 2 * pad),
      canvas.height - pad - ((ys[i] - y0) / (y1 - y0 || 1)) * (canvas.height - 2 * pad),
    ];
  }

  function drawMap() {
    const canvas = document.getElementById("label-map");
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (!points || !points.n) return;
    const place = layout(canvas);
    const given = answers();
    for (let i = 0; i < points.n; i++) {
      const found = result && result.by.get(points.id[i]);
      context.fillStyle = classColour(found ? found.label : null);
      const [x, y] = place(i);
      context.beginPath();
      context.arc(x, y, 3, 0, 2 * Math.PI);
      context.fill();
      if (points.id[i] in given) {
        context.strokeStyle = UNCLASSED.includes(given[points.id[i]]) ? "#888" : "#000";
        context.lineWidth = 2;
        context.beginPath();
        context.arc(x, y, 6, 0, 2 * Math.PI);
        context.stroke();
      }
    }
    document.getElementById("class-legend").innerHTML = set.classes
      .map((name) => `<span><i style="background:${classColour(name)}"></i>${LV.escape(name)}</span>`).join(" ");
  }

  function pick(event) {
    if (!set || !points) return;
    const canvas = event.currentTarget;
    const box = canvas.getBoundingClientRect();
    const mx = (event.clientX - box.left) * (canvas.width / box.width);
    const my = (event.clientY - box.top) * (canvas.height / box.height);
    const place = layout(canvas);
    let best = -1, bestDistance = 64;
    for (let i = 0; i < points.n; i++) {
      const [x, y] = place(i);
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d < bestDistance) [best, bestDistance] = [i, d];
    }
    if (best < 0) return;
    chosen = points.id[best];
    drawCandidates();
  }

  function drawCandidates() {
    const list = [...new Set([chosen, ...candidates()].filter(Boolean))];
    document.getElementById("candidate-note").textContent = result
      ? "the archive is least sure of these"
      : "click the map, or add a table, then press update";
    const given = answers();
    const names = Object.fromEntries(points.id.map((id, i) => [id, points.target[i]]));
    document.getElementById("candidates").innerHTML = list.map((id) => {
      const found = result && result.by.get(id);
      const guess = found && found.label ? `${LV.escape(found.label)} (${LV.format(found.probability, 2)})` : "—";
      const buttons = [...set.classes, ...UNCLASSED].map((label) =>
        `<button type="button" data-did="${LV.escape(id)}" data-label="${LV.escape(label)}"` +
        `${given[id] === label ? ' aria-pressed="true"' : ""}>${LV.escape(label)}</button>`).join("");
      return `<article class="candidate" data-did="${LV.escape(id)}">
        <h3>${LV.escape(names[id] || id)}${found && found.rank ? ` <small>rank ${found.rank}</small>` : ""}</h3>
        <img alt="spectrum of ${LV.escape(names[id] || id)}" src="${base}/datalink/preview?ID=${encodeURIComponent(id)}">
        <p>the archive says: ${guess}</p><p class="answers">${buttons}</p></article>`;
    }).join("");
    for (const button of document.querySelectorAll("#candidates button[data-label]")) {
      button.addEventListener("click", () => guarded(() => answer(button.dataset.did, button.dataset.label)));
    }
  }

  /** Where spectrum ``i`` is drawn, in CSS pixels from the map's top left (for tests and tools). */
  function position(i) {
    const canvas = document.getElementById("label-map");
    const box = canvas.getBoundingClientRect();
    const [x, y] = layout(canvas)(i);
    return [x * (box.width / canvas.width), y * (box.height / canvas.height)];
  }

  return { start, position, ids: () => (points ? points.id : []) };
})();

window.latentvoLabel = LabelPage;
LabelPage.start();

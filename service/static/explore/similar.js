// Similarity search from the browser: upload a spectrum (any format /similar reads) or name an
// archive spectrum, choose K and the dimensions that matter, and see the neighbours over the query.
"use strict";

const SimilarPage = (() => {
  const PLOTTED = 5;
  let model = null;
  let best = {};
  let last = null;

  async function start() {
    const status = document.getElementById("similar-status");
    try {
      model = await LV.currentModel();
      best = (await LV.dimensionMeanings(model.version)).best;
      buildDimensions();
      const id = LV.params.get("ID");
      if (id) document.getElementById("archive-id").value = id;
      document.getElementById("similar-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
      document.getElementById("send-result").addEventListener("click", sendResult);
      LV.say(status, `model version ${model.version}`);
      document.body.dataset.similarReady = "true";
      if (id) search();
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  /** A checkbox and a weight per informative dimension, labelled by what it carries; velocity off. */
  function buildDimensions() {
    const container = document.getElementById("dimensions");
    container.innerHTML = model.informative.map((d) => {
      const carries = best[d] ? best[d].label : null;
      const checked = d !== LV.velocityDim && carries !== "rv";
      return `<label class="dim"><input type="checkbox" name="dim" value="${d}" ${checked ? "checked" : ""}>
        ${LV.escape(LV.dimensionLabel(d, best))}
        <input type="number" name="weight-${d}" value="1" min="0" max="100" step="0.1" title="weight"></label>`;
    }).join("");
    container.dataset.initial = choice().join(" ") + "|" + weights().join(" ");
  }

  const choice = () => Array.from(document.querySelectorAll('input[name="dim"]:checked')).map((c) => Number(c.value));
  const weights = () => choice().map((d) => Number(document.querySelector(`input[name="weight-${d}"]`).value));

  async function search() {
    const status = document.getElementById("similar-status");
    const results = document.getElementById("results");
    const warning = document.getElementById("warning");
    warning.hidden = true;
    results.innerHTML = "";
    const form = new FormData();
    const file = document.getElementById("file").files[0];
    const id = document.getElementById("archive-id").value.trim();
    const k = document.getElementById("k").value;
    if (file) form.set("FILE", file, file.name);
    else if (id) form.set("ID", id);
    else { LV.say(status, "choose a file, or give the ID of an archive spectrum", true); return; }
    form.set("K", k);
    const dims = choice();
    const container = document.getElementById("dimensions");
    if (!dims.length) { LV.say(status, "tick at least one dimension", true); return; }
    if (dims.join(" ") + "|" + weights().join(" ") !== container.dataset.initial) {
      form.set("DIMS", dims.join(" "));
      form.set("WEIGHTS", weights().join(" "));
    }
    LV.say(status, "searching …");
    try {
      const response = await fetch(`${LV.base}/similar`, { method: "POST", body: form });
      const text = await response.text();
      const table = LV.parseVOTable(text);
      if (!response.ok) throw new Error(`${response.status}: the service refused the request`);
      last = { text, table, id: file ? null : id, k, dims: form.get("DIMS"), weights: form.get("WEIGHTS"), name: file ? file.name : id };
      showWarning(warning, table);
      await showResults(results, table);
      const download = document.getElementById("download");
      download.href = URL.createObjectURL(new Blob([text], { type: "application/x-votable+xml" }));
      download.download = "similar.vot";
      document.getElementById("result-actions").hidden = false;
      const over = `${table.params.search} search over z${String(table.params.DIMS).split(" ").join(", z")}`;
      // An upload compared by its lines is ranked by flux at its own resolution (PARAM ranking).
      LV.say(status, table.params.ranking === "flux"
        ? `${table.rows.length} most similar spectra: the nearest by ${over}, ranked by their flux at the upload's velocity and resolution (R ≈ ${LV.format(table.params.query_resolving_power, 3)}); the distance is the latent one`
        : `${table.rows.length} nearest spectra (${over})`);
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  function showWarning(element, table) {
    const score = table.params.ood_score;
    if (!table.warnings.length && !(score >= 0.9)) return;
    element.innerHTML = `<b>Weak answer.</b> ${LV.escape(table.warnings.join(" ") || "The spectrum is unlike the spectra of this archive.")}
      ${score !== undefined ? ` (ood_score ${LV.format(score, 3)})` : ""}`;
    element.hidden = false;
  }

  async function showResults(element, table) {
    const rows = table.records();
    const p = table.params;
    const rv = p.query_rv !== undefined && p.query_rv !== null ? `${LV.format(p.query_rv, 3)} ± ${LV.format(p.query_rv_err, 2)} km/s` : "—";
    // Continuum models say whether the upload's continuum shape was compared too (PARAM continuum_used).
    const compared = p.continuum_used === undefined ? ""
      : p.continuum_used ? " Compared by its lines and its continuum (calibrated as the archive's)."
      : ` Compared by its lines alone: its continuum differs from what the archive's calibration gives such a star (by ${LV.format(p.continuum_mismatch, 2)} in ln flux).`;
    element.innerHTML = `
      <p id="query-summary">Query <code>${LV.escape(p.query)}</code>: covers ${LV.format(100 * p.coverage, 3)}% of the model grid,
        reconstruction error ${LV.format(p.recon_error, 3)}, velocity ${LV.escape(rv)}.${LV.escape(compared)}</p>
      <div class="plot" id="similar-plot"></div>
      <table class="results"><thead><tr><th>rank</th><th>target</th><th>distance</th><th>Teff</th><th>log g</th><th>[Fe/H]</th><th>velocity (model)</th><th></th></tr></thead><tbody>
      ${rows.map((r) => `<tr class="result"><td>${r.rank}</td><td>${LV.escape(r.target_name || "")}</td><td>${LV.format(r.distance, 3)}</td>
        <td>${LV.format(r.teff, 4)}</td><td>${LV.format(r.logg, 3)}</td><td>${LV.format(r.feh, 3)}</td><td>${LV.format(r.rv_model, 3)}</td>
        <td><a href="${LV.base}/explore/spectrum?ID=${encodeURIComponent(r.obs_publisher_did)}">detail</a></td></tr>`).join("")}
      </tbody></table>`;
    const z = Array.from({ length: model.latentDim }, (_, d) => p[`query_z${d}`]);
    const query = await LV.decode(z);
    const shown = rows.slice(0, PLOTTED);
    const neighbours = await Promise.all(shown.map((r) => LV.reconstruction(r.obs_publisher_did)));
    LV.spectrumPlot(document.getElementById("similar-plot"), query.wavelength, [
      { label: "query (as the model reads it)", y: query.flux, colour: "#000000", width: 2 },
      ...neighbours.map((n, i) => ({ label: `${i + 1}: ${shown[i].target_name || shown[i].obs_publisher_did}`, y: n.observed, width: 1 })),
    ], { height: 320 });
  }

  /** The result to TOPCAT: an archive query is a GET URL of /similar itself; an upload's result is
   *  kept as a TAP job (uploaded back, so its rows and distances stay) and its result URL sent. */
  async function sendResult() {
    const status = document.getElementById("samp-status");
    LV.say(status, "sending …");
    try {
      let url;
      if (last.id) {
        const query = new URLSearchParams({ ID: last.id, K: last.k });
        if (last.dims) { query.set("DIMS", last.dims); query.set("WEIGHTS", last.weights); }
        url = new URL(`${LV.base}/similar?${query}`, window.location.href).href;
      } else {
        url = await LV.tapJob("SELECT * FROM TAP_UPLOAD.result ORDER BY rank", { result: last.text });
      }
      await LV.samp.sendTable(url, `spectra similar to ${last.name}`);
      LV.say(status, "sent");
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  return { start };
})();

SimilarPage.start();

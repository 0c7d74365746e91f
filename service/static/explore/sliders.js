// The slider explorer: one slider per informative latent dimension, starting at a spectrum's own
// value; every move decodes the latent vector (POST /explore/decode) and redraws the spectrum.
"use strict";

const SliderPage = (() => {
  const state = { z: [], original: [], wavelength: [], observed: [], decodedOriginal: [], decoded: [], pending: false, again: false };

  async function start() {
    const status = document.getElementById("sliders-status");
    try {
      const model = await LV.currentModel();
      const meanings = await LV.dimensionMeanings(model.version);
      let id = LV.params.get("ID");
      if (!id) {
        const first = await LV.tap(`SELECT TOP 1 obs_publisher_did FROM ml.latent WHERE model_version = ${model.version} ORDER BY row_index`);
        if (!first.rows.length) throw new Error("the archive has no encoded spectra yet");
        id = first.rows[0][0];
      }
      const row = await SpectrumDetail.record(id, model);
      const recon = await LV.reconstruction(id);
      document.getElementById("sliders-title").innerHTML =
        `${LV.escape(row.target_name || id)} <small>${LV.escape(id)} · Teff ${LV.format(row.teff, 4)} K, log g ${LV.format(row.logg, 3)}, [Fe/H] ${LV.format(row.feh, 3)}</small>`;
      state.model = model;
      state.z = Array.from({ length: model.latentDim }, (_, d) => row[`z${d}`]);
      state.original = state.z.slice();
      state.wavelength = recon.wavelength;
      state.observed = recon.observed;
      const first = await LV.decode(state.z);
      state.decodedOriginal = first.flux;
      state.decoded = first.flux;
      buildSliders(model, meanings.best);
      plot();
      document.getElementById("reset").addEventListener("click", reset);
      document.getElementById("near").addEventListener("click", nearest);
      document.getElementById("back").href = `${LV.base}/explore?ID=${encodeURIComponent(id)}`;
      LV.say(status, `model version ${model.version}: ${model.informative.length} informative dimensions of ${model.latentDim}`);
      window.latentvoSliders = { z: () => state.z.slice(), decoded: () => state.decoded.slice(), plotted: () => Array.from(plotElement().plot.data[3]) };
      document.body.dataset.slidersReady = "true";
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  const plotElement = () => document.getElementById("sliders-plot");

  function buildSliders(model, best) {
    const focus = Number(LV.params.get("DIM"));
    const container = document.getElementById("sliders");
    container.innerHTML = model.informative.map((d) => {
      const value = state.z[d];
      const lo = Math.min(-4, Math.floor(value - 1));
      const hi = Math.max(4, Math.ceil(value + 1));
      return `<div class="slider ${d === focus ? "focus" : ""}" data-dim="${d}">
        <label for="z${d}">${LV.escape(LV.dimensionLabel(d, best))}</label>
        <input type="range" id="z${d}" min="${lo}" max="${hi}" step="0.01" value="${value}">
        <output id="z${d}-value">${value.toFixed(2)}</output></div>`;
    }).join("");
    for (const input of container.querySelectorAll("input[type=range]")) {
      input.addEventListener("input", () => {
        const d = Number(input.id.slice(1));
        state.z[d] = Number(input.value);
        document.getElementById(`z${d}-value`).textContent = state.z[d].toFixed(2);
        redraw();
      });
    }
    const focused = container.querySelector(".focus");
    if (focused) focused.scrollIntoView({ block: "center" });
  }

  /** Decode the current vector; moves that arrive while a request is out are folded into the next. */
  async function redraw() {
    if (state.pending) { state.again = true; return; }
    state.pending = true;
    document.body.dataset.decoding = "true";
    try {
      do {
        state.again = false;
        const answer = await LV.decode(state.z);
        state.decoded = answer.flux;
        plot();
      } while (state.again);
    } catch (error) {
      LV.say(document.getElementById("sliders-status"), error.message, true);
    } finally {
      state.pending = false;
      document.body.dataset.decoding = "false";
    }
  }

  function plot() {
    const element = plotElement();
    const data = [state.wavelength, state.observed, state.decodedOriginal, state.decoded];
    if (element.plot) { element.plot.setData(data, false); return; }
    LV.spectrumPlot(element, state.wavelength, [
      { label: "observed", y: state.observed, colour: "#999999" },
      { label: "decoded at its own values", y: state.decodedOriginal, colour: "#0072B2", dash: [4, 3] },
      { label: "decoded at the sliders", y: state.decoded, colour: "#D55E00", width: 1.6 },
    ], { height: 340 });
  }

  function reset() {
    state.z = state.original.slice();
    for (const d of state.model.informative) {
      document.getElementById(`z${d}`).value = state.z[d];
      document.getElementById(`z${d}-value`).textContent = state.z[d].toFixed(2);
    }
    redraw();
  }

  /** Archive spectra nearest the moved point over the informative dimensions: exact, in ADQL. */
  async function nearest() {
    const out = document.getElementById("near-results");
    out.innerHTML = '<p class="status">searching …</p>';
    try {
      const distance = state.model.informative.map((d) => `POWER(l.z${d} - (${state.z[d]}), 2)`).join(" + ");
      const t = await LV.tap(
        `SELECT TOP 10 o.obs_publisher_did, o.target_name, o.teff, o.logg, o.feh, SQRT(${distance}) AS distance ` +
        "FROM ivoa.obscore AS o JOIN ml.latent AS l ON l.obs_publisher_did = o.obs_publisher_did " +
        `WHERE l.model_version = ${state.model.version} ORDER BY distance`);
      out.innerHTML = `<table><tr><th>target</th><th>distance</th><th>Teff</th><th>log g</th><th>[Fe/H]</th></tr>
        ${t.records().map((r) => `<tr><td><a href="${LV.base}/explore/spectrum?ID=${encodeURIComponent(r.obs_publisher_did)}">${LV.escape(r.target_name || r.obs_publisher_did)}</a></td>
        <td>${LV.format(r.distance, 3)}</td><td>${LV.format(r.teff, 4)}</td><td>${LV.format(r.logg, 3)}</td><td>${LV.format(r.feh, 3)}</td></tr>`).join("")}</table>`;
    } catch (error) {
      out.innerHTML = `<p class="error">${LV.escape(error.message)}</p>`;
    }
  }

  return { start };
})();

SliderPage.start();

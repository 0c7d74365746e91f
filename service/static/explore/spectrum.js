// The detail of one archive spectrum: its flux over the model's reconstruction, labels, latent
// coordinates, anomaly score and velocity, its nearest neighbours, links, and SAMP buttons.
"use strict";

const SpectrumDetail = (() => {
  const NEIGHBOURS = 6;
  const LABELS = ["teff", "logg", "feh", "rv", "snr"];

  /** The ivoa.obscore and ml.latent row of one spectrum under the model in service. */
  async function record(id, model) {
    const version = Number(model.version);
    const latent = Array.from({ length: model.latentDim }, (_, d) => `l.z${d}`).join(", ");
    const t = await LV.tap(
      "SELECT o.obs_publisher_did, o.target_name, o.obs_collection, o.s_ra, o.s_dec, o.teff, o.logg, o.feh, " +
      `o.rv, o.snr, o.access_url, l.anomaly_score, l.recon_error, ${latent} FROM ivoa.obscore AS o JOIN ml.latent AS l ` +
      `ON l.obs_publisher_did = o.obs_publisher_did WHERE l.model_version = ${version} ` +
      `AND o.obs_publisher_did = ${LV.quote(id)}`);
    if (!t.rows.length) throw new Error(`no spectrum ${id} is encoded by model version ${version}`);
    return t.records()[0];
  }

  /** Fill ``element`` with the detail of spectrum ``id``; resolves to the record shown. */
  async function show(element, id, model) {
    element.innerHTML = `<p class="status">loading ${LV.escape(id)} …</p>`;
    const meanings = await LV.dimensionMeanings(model.version);
    const row = await record(id, model);
    const [recon, similar, links] = await Promise.all([
      LV.reconstruction(id),
      LV.votable(`${LV.base}/similar?ID=${encodeURIComponent(id)}&K=${NEIGHBOURS}`),
      LV.datalinks(id),
    ]);
    const p = similar.params;
    const velocity = p.query_rv !== undefined && p.query_rv !== null
      ? `${LV.format(p.query_rv, 3)} ± ${LV.format(p.query_rv_err, 2)} km/s (model)` : "—";
    const dims = model.informative;
    const slidersUrl = `${LV.base}/explore/sliders?ID=${encodeURIComponent(id)}`;
    element.innerHTML = `
      <h2 class="detail-title">${LV.escape(row.target_name || row.obs_publisher_did)}
        <small>${LV.escape(row.obs_collection)}</small></h2>
      <p class="did"><code>${LV.escape(row.obs_publisher_did)}</code></p>
      <div class="plot" data-role="spectrum"></div>
      <div class="facts">
        <table class="labels">
          ${LABELS.map((l) => `<tr><th>${LV.escape(LV.LABEL_NAMES[l] || l)}</th><td data-label="${l}">${LV.format(row[l], 4)}</td></tr>`).join("")}
          <tr><th>model velocity</th><td data-role="velocity">${LV.escape(velocity)}</td></tr>
          <tr><th>anomaly score</th><td data-role="anomaly">${LV.format(row.anomaly_score, 3)}</td></tr>
          <tr><th>reconstruction error</th><td>${LV.format(row.recon_error, 3)}</td></tr>
          <tr><th>position (ICRS)</th><td>${row.s_ra === null ? "—" : `${LV.format(row.s_ra, 7)}°, ${LV.format(row.s_dec, 7)}°`}</td></tr>
        </table>
        <table class="latent">
          <tr><th>dimension</th><th>value</th></tr>
          ${dims.map((d) => `<tr><td>${LV.escape(LV.dimensionLabel(d, meanings.best))}</td><td>${LV.format(row["z" + d], 3)}</td></tr>`).join("")}
        </table>
      </div>
      <p class="actions">
        <a href="${slidersUrl}" data-role="sliders">Move its latent dimensions</a> ·
        <a href="${links.links}">DataLink links</a>
        ${links.fits ? ` · <a href="${LV.escape(links.fits.access_url)}">dataset (FITS)</a>` : ""}
        · <a href="${LV.base}/explore/similar?ID=${encodeURIComponent(id)}">similarity search</a>
      </p>
      <p class="actions samp">Send over SAMP:
        <button data-samp="spectrum" ${links.fits ? "" : "disabled"}>spectrum to SPLAT / TOPCAT</button>
        <button data-samp="neighbours">neighbours to TOPCAT</button>
        <button data-samp="point" ${row.s_ra === null ? "disabled" : ""}>point Aladin here</button>
        <span class="status" data-role="samp-status"></span></p>
      <h3>Nearest spectra in latent space</h3>
      <div class="neighbours" data-role="neighbours"></div>`;
    LV.spectrumPlot(element.querySelector('[data-role="spectrum"]'), recon.wavelength, [
      { label: "observed", y: recon.observed, colour: "#000000" },
      { label: "reconstruction", y: recon.model, colour: "#D55E00", width: 1.5 },
    ]);
    neighbourPlots(element.querySelector('[data-role="neighbours"]'), similar.records().filter((r) => r.obs_publisher_did !== id));
    wireSamp(element, row, links, `${LV.base}/similar?ID=${encodeURIComponent(id)}&K=${NEIGHBOURS}`);
    return row;
  }

  async function neighbourPlots(element, neighbours) {
    element.innerHTML = neighbours.map((n, i) => `
      <figure class="neighbour" data-id="${LV.escape(n.obs_publisher_did)}">
        <div class="plot small" data-plot="${i}"></div>
        <figcaption><a href="${LV.base}/explore/spectrum?ID=${encodeURIComponent(n.obs_publisher_did)}">${LV.escape(n.target_name || n.obs_publisher_did)}</a>
          distance ${LV.format(n.distance, 3)}; Teff ${LV.format(n.teff, 4)}, log g ${LV.format(n.logg, 3)}, [Fe/H] ${LV.format(n.feh, 3)}</figcaption>
      </figure>`).join("");
    await Promise.all(neighbours.map(async (n, i) => {
      const r = await LV.reconstruction(n.obs_publisher_did);
      LV.spectrumPlot(element.querySelector(`[data-plot="${i}"]`), r.wavelength, [{ label: "observed", y: r.observed }],
        { width: 260, height: 120, legend: false, small: true });
    }));
  }

  function wireSamp(element, row, links, neighboursUrl) {
    const status = element.querySelector('[data-role="samp-status"]');
    const run = async (what) => {
      LV.say(status, "sending …");
      try {
        if (what === "spectrum") {
          const url = new URL(links.fits.access_url, window.location.href).href;
          await LV.samp.sendSpectrum(url, {
            "Access.Reference": url, "Access.Format": "application/fits",
            "Target.Name": row.target_name || "", "ssa:Curation.PublisherDID": row.obs_publisher_did,
          }, row.target_name || row.obs_publisher_did);
        } else if (what === "neighbours") {
          await LV.samp.sendTable(new URL(neighboursUrl, window.location.href).href, `neighbours of ${row.target_name || row.obs_publisher_did}`);
        } else {
          await LV.samp.pointAt(row.s_ra, row.s_dec);
        }
        LV.say(status, "sent");
      } catch (error) {
        LV.say(status, error.message, true);
      }
    };
    for (const button of element.querySelectorAll("[data-samp]")) button.addEventListener("click", () => run(button.dataset.samp));
  }

  return { show, record };
})();

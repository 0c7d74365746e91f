// The correlation heat map: mutual information between each latent dimension and each label, for
// the model beside the PCA baseline of the same size, from ml.label_correlation.
"use strict";

const CorrelationPage = (() => {
  async function start() {
    const status = document.getElementById("correlations-status");
    try {
      const model = await LV.currentModel();
      const { rows } = await LV.dimensionMeanings(model.version);
      const labels = [...new Set(rows.map((r) => r.label))].sort();
      const dims = [...new Set(rows.map((r) => r.dim))].sort((a, b) => a - b);
      const cell = Object.fromEntries(rows.map((r) => [`${r.dim}/${r.label}`, r]));
      const top = Math.max(1e-9, ...rows.map((r) => Math.max(r.mi || 0, r.pca_mi || 0)));
      const shade = (value) => {
        if (value === null || value === undefined) return "";
        const rgb = LV.viridis(value / top);
        const light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55;
        return `background:${LV.css(rgb)};color:${light ? "#000" : "#fff"}`;
      };
      const value = (mi, error) => (mi === null || mi === undefined ? "—" : `${mi.toFixed(2)}<small> ± ${(error || 0).toFixed(2)}</small>`);
      const informative = new Set(model.informative);
      document.getElementById("heatmap").innerHTML = `<table class="heatmap">
        <thead><tr><th rowspan="2">latent dimension</th>${labels.map((l) => `<th colspan="2">${LV.escape(LV.LABEL_NAMES[l] || l)}</th>`).join("")}</tr>
        <tr>${labels.map(() => "<th>model</th><th>PCA</th>").join("")}</tr></thead><tbody>
        ${dims.map((d) => `<tr class="${informative.has(d) ? "informative" : "uninformative"}">
          <th><a href="${LV.base}/explore/sliders?DIM=${d}" data-dim="${d}">z${d}</a>${d === LV.velocityDim ? " <small>(radial velocity)</small>" : ""}${informative.has(d) ? "" : " <small>(unused)</small>"}</th>
          ${labels.map((l) => {
            const r = cell[`${d}/${l}`] || {};
            return `<td class="mi" style="${shade(r.mi)}" title="model: MI of z${d} with ${l}">${value(r.mi, r.mi_error)}</td>` +
              `<td class="pca" style="${shade(r.pca_mi)}" title="PCA component ${d} with ${l}">${value(r.pca_mi, r.pca_mi_error)}</td>`;
          }).join("")}</tr>`).join("")}
        </tbody></table>
        <p class="legend">mutual information (nats): 0 <span class="ramp" style="background:linear-gradient(to right,${Array.from({ length: 10 }, (_, i) => LV.css(LV.viridis(i / 9))).join(",")})"></span> ${top.toFixed(2)}</p>`;
      LV.say(status, `model version ${model.version}: ${dims.length} dimensions × ${labels.length} labels; grey rows are dimensions the model leaves unused`);
      document.body.dataset.correlationsReady = "true";
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }
  return { start };
})();

CorrelationPage.start();

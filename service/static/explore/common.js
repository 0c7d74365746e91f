// Shared code of the explorer pages: reading VOTables, TAP queries, plots, colour scales and SAMP.
// Everything talks to this service's public endpoints (TAP, DataLink, /similar) and its JSON
// endpoints under /explore; nothing is loaded from another host.
"use strict";

const LV = (() => {
  const base = document.documentElement.dataset.base || "";
  // The latent dimension that is the radial velocity in a Doppler-equivariant model (a shift of the
  // decoded spectrum by z × scale km/s), as the server renders it into the page.
  const velocityDim = document.documentElement.dataset.velocityDim === undefined ? null : Number(document.documentElement.dataset.velocityDim);
  const velocityScale = Number(document.documentElement.dataset.velocityScale || 0);

  // -- VOTable (TABLEDATA) ------------------------------------------------------------------------

  /** The first table of a VOTable document: fields, rows (arrays of typed values), PARAMs, INFOs. */
  function parseVOTable(text) {
    const doc = new DOMParser().parseFromString(text, "application/xml");
    if (doc.getElementsByTagName("parsererror").length) throw new Error("the answer is not a VOTable");
    const all = (node, tag) => Array.from(node.getElementsByTagNameNS("*", tag));
    const infos = {};
    const warnings = [];
    for (const el of all(doc, "INFO")) {
      infos[el.getAttribute("name")] = { value: el.getAttribute("value"), text: el.textContent.trim() };
      if (el.getAttribute("name") === "warning") warnings.push(el.textContent.trim());
    }
    const status = infos.QUERY_STATUS;
    if (status && status.value === "ERROR") throw new Error(status.text || "the service reported an error");
    const table = all(doc, "TABLE")[0];
    const params = {};
    for (const el of table ? all(table, "PARAM") : []) {
      params[el.getAttribute("name")] = convert(el.getAttribute("value"), el.getAttribute("datatype"));
    }
    const fields = table ? all(table, "FIELD").map((f) => ({
      name: f.getAttribute("name"),
      datatype: f.getAttribute("datatype"),
      unit: f.getAttribute("unit") || "",
    })) : [];
    const rows = table ? all(table, "TR").map((tr) =>
      all(tr, "TD").map((td, i) => convert(td.textContent, fields[i] && fields[i].datatype))) : [];
    const index = Object.fromEntries(fields.map((f, i) => [f.name, i]));
    const column = (name) => (name in index ? rows.map((r) => r[index[name]]) : []);
    const records = () => rows.map((r) => Object.fromEntries(fields.map((f, i) => [f.name, r[i]])));
    return { fields, rows, params, infos, warnings, column, records };
  }

  function convert(text, datatype) {
    if (text === null || text === undefined) return null;
    if (["double", "float", "int", "long", "short", "unsignedByte"].includes(datatype)) {
      if (text.trim() === "" || text.trim() === "NaN") return null;
      return Number(text);
    }
    if (datatype === "boolean") return /^(t|true|1)$/i.test(text.trim());
    return text;
  }

  async function checked(response) {
    if (response.ok) return response;
    const text = await response.text();
    let message = `${response.status} ${response.statusText}`;
    try {
      const json = JSON.parse(text);
      message = json.message || message;
    } catch (_) {
      try {
        parseVOTable(text);
      } catch (error) {
        message = error.message;
      }
    }
    throw new Error(message);
  }

  async function votable(url, init) {
    const response = await checked(await fetch(url, init));
    return parseVOTable(await response.text());
  }

  async function json(url, init) {
    const response = await checked(await fetch(url, init));
    return response.json();
  }

  // -- TAP ------------------------------------------------------------------------------------------

  const quote = (text) => "'" + String(text).replace(/'/g, "''") + "'";

  /** A synchronous ADQL query, POSTed (no length limit on the query). */
  function tap(adql, maxrec) {
    const body = new URLSearchParams({ LANG: "ADQL", QUERY: adql });
    if (maxrec) body.set("MAXREC", String(maxrec));
    return votable(`${base}/tap/sync`, { method: "POST", body });
  }

  /** Run an ADQL query as a TAP async job (UWS); resolves to the URL of its VOTable result. The URL
   *  is what other applications get over SAMP: it stays valid until the job's destruction time. */
  async function tapJob(adql, uploads = {}) {
    const form = new FormData();
    form.set("LANG", "ADQL");
    form.set("QUERY", adql);
    const names = Object.keys(uploads);
    if (names.length) {
      form.set("UPLOAD", names.map((name) => `${name},param:${name}`).join(";"));
      for (const name of names) form.set(name, new Blob([uploads[name]], { type: "application/x-votable+xml" }), `${name}.xml`);
    }
    return `${await uwsJob(`${base}/tap/async`, form)}/results/result`;
  }

  /** Create a UWS job from ``form`` at the job list ``listUrl``, run it and wait for it: resolves to
   *  the job's URL once COMPLETED, throws with the job's own error message if it ends otherwise. */
  async function uwsJob(listUrl, form) {
    form.set("PHASE", "RUN");
    const created = await checked(await fetch(listUrl, { method: "POST", body: form }));
    const jobUrl = created.url;
    for (let wait = 100; ; wait = Math.min(wait * 1.5, 2000)) {
      const phase = (await (await checked(await fetch(`${jobUrl}/phase`))).text()).trim();
      if (phase === "COMPLETED") return jobUrl;
      if (phase === "ERROR" || phase === "ABORTED") {
        const error = await fetch(`${jobUrl}/error`);
        let message = `the job ended in ${phase}`;
        try {
          parseVOTable(await error.text());
        } catch (problem) {
          message = problem.message;
        }
        throw new Error(message);
      }
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  /** A one-column VOTable of DIDs (obs_publisher_did), to upload to TAP. */
  function didTable(ids) {
    return `<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>
      <FIELD name="obs_publisher_did" datatype="char" arraysize="*"/><DATA><TABLEDATA>
      ${ids.map((id) => `<TR><TD>${escape(id)}</TD></TR>`).join("")}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>`;
  }

  /** The model in service: version, latent size, informative and similarity dimensions. */
  async function currentModel() {
    const t = await tap("SELECT model_version, latent_dim, informative_dims FROM ml.model WHERE is_current = 1");
    if (!t.rows.length) throw new Error("no model in service yet: run latentvo train, encode, analyse, index");
    const r = t.records()[0];
    return { version: r.model_version, latentDim: r.latent_dim, informative: (r.informative_dims || "").split(" ").filter(Boolean).map(Number) };
  }

  /** Per latent dimension, the label it carries most: {dim: {label, mi, mi_error, pca_mi, pca_mi_error}}. */
  async function dimensionMeanings(version) {
    const t = await tap(`SELECT dim, label, mi, mi_error, pca_mi, pca_mi_error, informative FROM ml.label_correlation WHERE model_version = ${Number(version)}`);
    const best = {};
    for (const r of t.records()) {
      if (r.mi === null) continue;
      if (!best[r.dim] || r.mi > best[r.dim].mi) best[r.dim] = r;
    }
    return { best, rows: t.records() };
  }

  // -- presentation ---------------------------------------------------------------------------------

  const LABEL_NAMES = {
    teff: "temperature (Teff, K)", logg: "surface gravity (log g)", feh: "metallicity ([Fe/H])",
    rv: "radial velocity (km/s)", snr: "signal-to-noise", vsini: "rotation (v sin i, km/s)",
    anomaly_score: "anomaly score", collection: "collection",
  };
  const SHORT_NAMES = { teff: "temperature", logg: "gravity", feh: "metallicity", rv: "velocity", snr: "S/N", vsini: "rotation" };

  /** "z3 — temperature (MI 1.20)": what a latent dimension means, for people who never heard of a VAE. */
  function dimensionLabel(dim, best) {
    if (dim === velocityDim) return `z${dim} — radial velocity (Doppler shift, 1 = ${velocityScale} km/s)`;
    const b = best[dim];
    return b ? `z${dim} — ${SHORT_NAMES[b.label] || b.label} (MI ${b.mi.toFixed(2)})` : `z${dim}`;
  }

  const format = (value, digits = 3) => {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(digits);
  };

  const escape = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  // viridis (perceptually uniform, colour-blind safe): matplotlib's map at 10 even steps
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
    .map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255));
  // Okabe & Ito's qualitative palette, distinguishable with every common colour-vision deficiency
  const CATEGORICAL = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
    .map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255));
  const MISSING = [0.75, 0.75, 0.75];

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    return VIRIDIS[i].map((c, k) => c + f * (VIRIDIS[i + 1][k] - c));
  }

  const css = (rgb) => `rgb(${rgb.map((c) => Math.round(c * 255)).join(",")})`;

  /** Robust range (2nd–98th percentile) of the finite values, so one outlier does not wash out the map. */
  function robustRange(values) {
    const finite = values.filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
    if (!finite.length) return [0, 1];
    const at = (q) => finite[Math.min(finite.length - 1, Math.floor(q * (finite.length - 1)))];
    const lo = at(0.02);
    const hi = at(0.98);
    return hi > lo ? [lo, hi] : [finite[0], finite[finite.length - 1] + 1e-9];
  }

  // -- plots (uPlot) --------------------------------------------------------------------------------

  const SERIES_COLOURS = ["#000000", "#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00"];

  /** A spectrum plot: x = wavelength (Å), one line per series {label, y, colour, dash}. */
  function spectrumPlot(element, wavelength, series, options = {}) {
    element.innerHTML = "";
    const width = options.width || element.clientWidth || 600;
    const height = options.height || 260;
    const plot = new uPlot({
      width, height,
      legend: { show: options.legend !== false },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false } },
      axes: options.small ? [{ size: 24, font: "10px system-ui" }, { size: 32, font: "10px system-ui" }]
        : [{ label: "vacuum wavelength (Å)" }, { label: "normalised flux" }],
      series: [{ label: "λ (Å)" }, ...series.map((s, i) => ({
        label: s.label, stroke: s.colour || SERIES_COLOURS[i % SERIES_COLOURS.length],
        width: s.width || 1, dash: s.dash, spanGaps: false, points: { show: false },
      }))],
    }, [wavelength, ...series.map((s) => s.y)], element);
    element.plot = plot;
    return plot;
  }

  // -- DataLink -------------------------------------------------------------------------------------

  /** The DataLink {links} URL of one spectrum and its FITS dataset link (null when it has none). */
  async function datalinks(id) {
    const t = await votable(`${base}/datalink/links?ID=${encodeURIComponent(id)}`);
    const links = t.records().filter((r) => !r.error_message);
    const find = (predicate) => links.find(predicate) || null;
    return {
      links: `${base}/datalink/links?ID=${encodeURIComponent(id)}`,
      fits: find((r) => r.semantics === "#this" && /fits/.test(r.content_type || "")),
    };
  }

  /** Observed (normalised as the model sees it) and reconstructed flux of an archive spectrum. */
  async function reconstruction(id) {
    const t = await votable(`${base}/datalink/reconstruction?ID=${encodeURIComponent(id)}`);
    return { wavelength: t.column("wavelength"), observed: t.column("flux_observed"), model: t.column("flux_model"), params: t.params };
  }

  async function decode(z) {
    return json(`${base}/explore/decode`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ z }) });
  }

  // -- SAMP (Web Profile) ---------------------------------------------------------------------------

  /** A SAMP Web Profile client: XML-RPC to the hub on the user's own machine (port 21012), which asks
   *  the user once whether this page may register. Used only when the user presses a Send button. */
  const samp = (() => {
    const HUB = "http://localhost:21012/";
    let session = null;

    const xmlValue = (v) => {
      if (Array.isArray(v)) return `<value><array><data>${v.map(xmlValue).join("")}</data></array></value>`;
      if (v !== null && typeof v === "object") {
        return `<value><struct>${Object.entries(v).map(([k, x]) => `<member><name>${escape(k)}</name>${xmlValue(x)}</member>`).join("")}</struct></value>`;
      }
      return `<value><string>${escape(v)}</string></value>`;
    };
    const fromXml = (node) => {
      const child = Array.from(node.children)[0];
      if (!child) return node.textContent;
      switch (child.localName) {
        case "struct":
          return Object.fromEntries(Array.from(child.children).map((m) => [m.getElementsByTagName("name")[0].textContent, fromXml(m.getElementsByTagName("value")[0])]));
        case "array":
          return Array.from(child.getElementsByTagName("data")[0].children).map(fromXml);
        default:
          return child.textContent;
      }
    };

    async function call(method, params) {
      const body = `<?xml version="1.0"?><methodCall><methodName>${method}</methodName><params>${params.map((p) => `<param>${xmlValue(p)}</param>`).join("")}</params></methodCall>`;
      let response;
      try {
        response = await fetch(HUB, { method: "POST", headers: { "Content-Type": "text/xml" }, body });
      } catch (_) {
        throw new Error("no SAMP hub answers on this computer: start TOPCAT or Aladin (they run one), then try again");
      }
      const doc = new DOMParser().parseFromString(await response.text(), "text/xml");
      const fault = doc.getElementsByTagName("fault")[0];
      if (fault) {
        const detail = fromXml(fault.getElementsByTagName("value")[0]);
        throw new Error(`SAMP hub: ${detail.faultString || "refused"}`);
      }
      const value = doc.getElementsByTagName("value")[0];
      return value ? fromXml(value) : null;
    }

    async function register() {
      if (session) return session;
      const answer = await call("samp.webhub.register", [{ "samp.name": "latentvo explorer" }]);
      session = answer["samp.private-key"];
      await call("samp.webhub.declareMetadata", [session, {
        "samp.name": "latentvo explorer",
        "samp.description.text": "Latent-space explorer of a latentvo spectral archive",
      }]);
      window.addEventListener("pagehide", () => { call("samp.webhub.unregister", [session]).catch(() => {}); });
      return session;
    }

    /** Send one message to every client that subscribes to its MType; the ids of those reached. */
    async function notifyAll(mtype, params) {
      const key = await register();
      return call("samp.webhub.notifyAll", [key, { "samp.mtype": mtype, "samp.params": params }]);
    }

    return {
      notifyAll,
      sendTable: (url, name) => notifyAll("table.load.votable", { url, name }),
      sendSpectrum: (url, meta, name) => notifyAll("spectrum.load.ssa-generic", { url, meta, name }),
      pointAt: (ra, dec) => notifyAll("coord.pointAt.sky", { ra: String(ra), dec: String(dec) }),
    };
  })();

  /** Show a short status line (errors in red) in ``element``. */
  function say(element, text, isError = false) {
    element.textContent = text;
    element.classList.toggle("error", isError);
  }

  const params = new URLSearchParams(window.location.search);

  return {
    base, velocityDim, params, parseVOTable, votable, json, tap, tapJob, uwsJob, didTable, quote, currentModel,
    dimensionMeanings,
    LABEL_NAMES, dimensionLabel, format, escape, viridis, CATEGORICAL, MISSING, css, robustRange,
    spectrumPlot, datalinks, reconstruction, decode, samp, say,
  };
})();

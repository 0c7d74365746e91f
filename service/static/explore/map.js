// The map page: every archive spectrum as a point of ml.map, drawn with WebGL so that 10^5 points
// pan and zoom smoothly; colour by a label, hover for a tooltip, click for the detail, lasso or box
// to select, and the selection to TOPCAT over SAMP.
"use strict";

/** Points drawn while the map moves: a random subset, the whole archive once it rests. Without a
 *  GPU (software WebGL) a redraw of 10^5 points takes ~70 ms; of this many, ~20 ms. */
const MOVING_POINTS = 25000;
const REST_MS = 150;

/** A WebGL scatter plot with equal axes, pan (drag), zoom (wheel) and screen-space picking. */
class Scatter {
  constructor(canvas, x, y) {
    this.canvas = canvas;
    this.x = Float32Array.from(x);
    this.y = Float32Array.from(y);
    this.n = this.x.length;
    // The GPU buffers hold the points in a fixed random order, so that any leading part of them is
    // a fair sample of the map; slot[i] is where point i sits in them.
    this.order = shuffled(this.n);
    this.slot = new Uint32Array(this.n);
    this.order.forEach((i, k) => { this.slot[i] = k; });
    // one RGBA byte quadruple per slot: the colour, and in alpha whether it is selected (255)
    this.rgba = new Uint8Array(4 * this.n).fill(128);
    for (let k = 0; k < this.n; k++) this.rgba[4 * k + 3] = 0;
    this.drawn = 0;
    // No multisampling: points are discs cut in the fragment shader, and without a GPU (software
    // WebGL) multisampling makes a redraw of 10^5 points three to four times slower.
    const gl = canvas.getContext("webgl", { antialias: false });
    if (!gl) throw new Error("this browser has no WebGL: the map needs it");
    this.gl = gl;
    this.program = this.compile(`
      attribute vec2 a_pos; attribute vec4 a_colour;
      uniform vec2 u_scale; uniform vec2 u_offset; uniform float u_size;
      varying vec3 v_colour; varying float v_selected;
      void main() {
        gl_Position = vec4(a_pos * u_scale + u_offset, 0.0, 1.0);
        gl_PointSize = u_size * (1.0 + 0.9 * a_colour.a);
        v_colour = a_colour.rgb; v_selected = a_colour.a;
      }`, `
      precision mediump float;
      varying vec3 v_colour; varying float v_selected;
      void main() {
        float r = length(gl_PointCoord - vec2(0.5));
        if (r > 0.5) discard;
        vec3 colour = (v_selected > 0.5 && r > 0.32) ? vec3(0.0) : v_colour;
        gl_FragColor = vec4(colour, v_selected > 0.5 ? 1.0 : 0.85);
      }`);
    const xy = new Float32Array(2 * this.n);
    this.order.forEach((i, k) => { xy[2 * k] = this.x[i]; xy[2 * k + 1] = this.y[i]; });
    this.buffers = {
      pos: this.buffer(xy, "a_pos", 2, this.gl.FLOAT),
      colour: this.buffer(this.rgba, "a_colour", 4, this.gl.UNSIGNED_BYTE),
    };
    this.fit();
  }

  compile(vertex, fragment) {
    const gl = this.gl;
    const shader = (type, source) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, source);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const program = gl.createProgram();
    gl.attachShader(program, shader(gl.VERTEX_SHADER, vertex));
    gl.attachShader(program, shader(gl.FRAGMENT_SHADER, fragment));
    gl.linkProgram(program);
    gl.useProgram(program);
    return program;
  }

  buffer(data, attribute, size, type) {
    const gl = this.gl;
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
    const location = gl.getAttribLocation(this.program, attribute);
    gl.enableVertexAttribArray(location);
    gl.vertexAttribPointer(location, size, type, type !== gl.FLOAT, 0, 0);
    return buffer;
  }

  update(buffer, data) {
    this.gl.bindBuffer(this.gl.ARRAY_BUFFER, buffer);
    this.gl.bufferSubData(this.gl.ARRAY_BUFFER, 0, data);
  }

  /** Colour the points: ``rgb`` holds three bytes per point. */
  setColours(rgb) {
    for (let i = 0; i < this.n; i++) {
      const k = 4 * this.slot[i];
      this.rgba[k] = rgb[3 * i]; this.rgba[k + 1] = rgb[3 * i + 1]; this.rgba[k + 2] = rgb[3 * i + 2];
    }
    this.update(this.buffers.colour, this.rgba);
    this.draw();
  }

  /** Redraw at the next animation frame: a burst of wheel or drag events costs one redraw. While
   *  the view moves, a sample is drawn; the whole map once it has rested for REST_MS. */
  draw(moving = false) {
    this.moving = this.moving || moving;
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = null;
        this.drawNow(this.moving ? MOVING_POINTS : this.n);
        this.moving = false;
      });
    }
    if (moving) {
      clearTimeout(this.rest);
      this.rest = setTimeout(() => this.draw(), REST_MS);
    }
  }

  setSelection(indices) {
    for (let k = 0; k < this.n; k++) this.rgba[4 * k + 3] = 0;
    for (const i of indices) this.rgba[4 * this.slot[i] + 3] = 255;
    this.update(this.buffers.colour, this.rgba);
    this.draw();
  }

  /** Show every point (``all``), or the central 98% of them on each axis so that a few outliers
   *  do not squeeze the rest of the archive into a corner. */
  fit(all = false) {
    const quantiles = (values) => {
      const sorted = Float32Array.from(values).sort();
      const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))];
      return all ? [sorted[0], sorted[sorted.length - 1]] : [at(0.01), at(0.99)];
    };
    let [x0, x1, y0, y1] = [-1, 1, -1, 1];
    if (this.n) [[x0, x1], [y0, y1]] = [quantiles(this.x), quantiles(this.y)];
    this.cx = (x0 + x1) / 2;
    this.cy = (y0 + y1) / 2;
    const { width, height } = this.size();
    this.k = 0.9 * Math.min(width / Math.max(x1 - x0, 1e-9), height / Math.max(y1 - y0, 1e-9));
    this.draw();
  }

  size() {
    const rect = this.canvas.getBoundingClientRect();
    return { width: rect.width || 1, height: rect.height || 1 };
  }

  drawNow(count = this.n) {
    const gl = this.gl;
    const { width, height } = this.size();
    const ratio = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * ratio)) this.canvas.width = Math.round(width * ratio);
    if (this.canvas.height !== Math.round(height * ratio)) this.canvas.height = Math.round(height * ratio);
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    const sx = (2 * this.k) / width;
    const sy = (2 * this.k) / height;
    gl.uniform2f(gl.getUniformLocation(this.program, "u_scale"), sx, sy);
    gl.uniform2f(gl.getUniformLocation(this.program, "u_offset"), -this.cx * sx, -this.cy * sy);
    const size = Math.max(2, Math.min(9, 9 - Math.log10(Math.max(this.n, 1)) * 1.3)) * ratio;
    gl.uniform1f(gl.getUniformLocation(this.program, "u_size"), size);
    this.drawn = Math.min(count, this.n);
    gl.drawArrays(gl.POINTS, 0, this.drawn);
  }

  /** Canvas pixel position (CSS px from its top left) of point i. */
  screen(i) {
    const { width, height } = this.size();
    return [(this.x[i] - this.cx) * this.k + width / 2, height / 2 - (this.y[i] - this.cy) * this.k];
  }

  /** The data coordinates under canvas pixel (px, py). */
  data(px, py) {
    const { width, height } = this.size();
    return [(px - width / 2) / this.k + this.cx, (height / 2 - py) / this.k + this.cy];
  }

  /** The point nearest canvas pixel (px, py) within ``radius`` px, or -1. */
  nearest(px, py, radius = 7) {
    const [dx, dy] = this.data(px, py);
    const limit = (radius / this.k) ** 2;
    let best = -1;
    let bestDistance = limit;
    for (let i = 0; i < this.n; i++) {
      const d = (this.x[i] - dx) ** 2 + (this.y[i] - dy) ** 2;
      if (d < bestDistance) { bestDistance = d; best = i; }
    }
    return best;
  }

  /** Indices of the points inside a polygon of canvas pixels. */
  inside(polygon) {
    const vertices = polygon.map(([px, py]) => this.data(px, py));
    const result = [];
    for (let i = 0; i < this.n; i++) if (pointInPolygon(this.x[i], this.y[i], vertices)) result.push(i);
    return result;
  }

  pan(dxPixels, dyPixels) { this.cx -= dxPixels / this.k; this.cy += dyPixels / this.k; this.draw(true); }

  zoom(factor, px, py) {
    const [before0, before1] = this.data(px, py);
    this.k *= factor;
    const [after0, after1] = this.data(px, py);
    this.cx += before0 - after0;
    this.cy += before1 - after1;
    this.draw(true);
  }
}

/** 0 … n-1 in a random order that is the same on every load (a seeded Fisher–Yates shuffle). */
function shuffled(n) {
  const order = Uint32Array.from({ length: n }, (_, i) => i);
  let seed = 12345;
  for (let i = n - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    const j = seed % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

function pointInPolygon(x, y, vertices) {
  let inside = false;
  for (let i = 0, j = vertices.length - 1; i < vertices.length; j = i++) {
    const [xi, yi] = vertices[i];
    const [xj, yj] = vertices[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

const MapPage = (() => {
  const MAX_LISTED = 500;
  let points = null;
  let scatter = null;
  let model = null;
  let selection = [];

  async function start() {
    const status = document.getElementById("map-status");
    try {
      model = await LV.currentModel();
      const method = LV.params.get("METHOD") || "";
      points = await LV.json(`${LV.base}/explore/map${method ? `?METHOD=${encodeURIComponent(method)}` : ""}`);
      const canvas = document.getElementById("map-canvas");
      scatter = new Scatter(canvas, points.x, points.y);
      setupControls();
      colourBy(document.getElementById("colour-by").value);
      interaction(canvas);
      scatter.drawNow();
      window.addEventListener("resize", () => scatter.draw());
      LV.say(status, `${points.n} spectra, model version ${points.model_version}, ${points.method.toUpperCase()} projection of the similarity dimensions`);
      window.latentvoMap = {
        n: points.n, ids: points.id,
        drawn: () => scatter.drawn,
        screen: (i) => scatter.screen(i),
        selected: () => selection.map((i) => points.id[i]),
        scatter,
      };
      document.body.dataset.mapReady = "true";
      const id = LV.params.get("ID");
      if (id) openDetail(id);
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  function setupControls() {
    const select = document.getElementById("colour-by");
    const options = [...Object.keys(points.labels), "collection"];
    select.innerHTML = options.map((name) => `<option value="${name}">${LV.escape(LV.LABEL_NAMES[name] || name)}</option>`).join("");
    select.value = "teff" in points.labels ? "teff" : options[0];
    select.addEventListener("change", () => colourBy(select.value));
    const methods = document.getElementById("method");
    methods.innerHTML = points.methods.map((m) => `<option ${m === points.method ? "selected" : ""}>${m}</option>`).join("");
    methods.addEventListener("change", () => { window.location.search = `?METHOD=${methods.value}`; });
    document.getElementById("fit").addEventListener("click", () => scatter.fit(true));
    document.getElementById("clear").addEventListener("click", () => select_([]));
    document.getElementById("send-selection").addEventListener("click", sendSelection);
  }

  function colourBy(name) {
    const rgb = new Uint8Array(3 * points.n);
    const legend = document.getElementById("legend");
    const bytes = (colour) => colour.map((c) => Math.round(255 * c));
    if (name === "collection") {
      const palette = LV.CATEGORICAL.map(bytes);
      points.collection.forEach((code, i) => rgb.set(palette[code % palette.length], 3 * i));
      legend.innerHTML = points.collections.map((c, i) => `<span class="swatch" style="background:${LV.css(LV.CATEGORICAL[i % LV.CATEGORICAL.length])}"></span>${LV.escape(c)}`).join(" ");
    } else {
      const values = points.labels[name];
      const [lo, hi] = LV.robustRange(values);
      const ramp = Array.from({ length: 256 }, (_, k) => bytes(LV.viridis(k / 255)));
      const missing = bytes(LV.MISSING);
      const scale = 255 / (hi - lo);
      values.forEach((v, i) => {
        rgb.set(v === null ? missing : ramp[Math.max(0, Math.min(255, Math.round((v - lo) * scale)))], 3 * i);
      });
      const stops = Array.from({ length: 10 }, (_, i) => LV.css(LV.viridis(i / 9))).join(",");
      legend.innerHTML = `${LV.escape(LV.LABEL_NAMES[name] || name)}: ${LV.format(lo, 4)} <span class="ramp" style="background:linear-gradient(to right,${stops})"></span> ${LV.format(hi, 4)}
        <span class="swatch" style="background:${LV.css(LV.MISSING)}"></span>no value`;
    }
    scatter.setColours(rgb);
  }

  function interaction(canvas) {
    const tooltip = document.getElementById("tooltip");
    const overlay = document.getElementById("lasso");
    const mode = () => document.querySelector('input[name="mode"]:checked').value;
    let drag = null;
    const local = (event) => {
      const rect = canvas.getBoundingClientRect();
      return [event.clientX - rect.left, event.clientY - rect.top];
    };
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [px, py] = local(event);
      scatter.zoom(Math.exp(-event.deltaY * 0.0015), px, py);
    }, { passive: false });
    canvas.addEventListener("pointerdown", (event) => {
      const start = local(event);
      const how = event.shiftKey ? "lasso" : mode();
      drag = { start, last: start, how, path: [start], moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      const p = local(event);
      if (!drag) return hover(p, tooltip);
      if (Math.hypot(p[0] - drag.start[0], p[1] - drag.start[1]) > 3) drag.moved = true;
      if (drag.how === "pan") scatter.pan(p[0] - drag.last[0], p[1] - drag.last[1]);
      else if (drag.how === "lasso") drag.path.push(p);
      else drag.path = box(drag.start, p);
      drag.last = p;
      if (drag.how !== "pan") outline(overlay, drag.path);
    });
    canvas.addEventListener("pointerup", (event) => {
      const p = local(event);
      const finished = drag;
      drag = null;
      outline(overlay, []);
      if (!finished) return;
      if (!finished.moved) {
        const i = scatter.nearest(p[0], p[1]);
        if (i >= 0) openDetail(points.id[i]);
        return;
      }
      if (finished.how !== "pan" && finished.path.length > 2) select_(scatter.inside(finished.path));
    });
    canvas.addEventListener("pointerleave", () => { tooltip.hidden = true; });
  }

  const box = ([x0, y0], [x1, y1]) => [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];

  function outline(svg, path) {
    svg.innerHTML = path.length ? `<polygon points="${path.map((p) => p.join(",")).join(" ")}" />` : "";
  }

  function hover([px, py], tooltip) {
    const i = scatter.nearest(px, py);
    if (i < 0) { tooltip.hidden = true; return; }
    const l = points.labels;
    tooltip.innerHTML = `<b>${LV.escape(points.target[i] || "")}</b><br><code>${LV.escape(points.id[i])}</code><br>
      Teff ${LV.format(l.teff[i], 4)} K · log g ${LV.format(l.logg[i], 3)} · [Fe/H] ${LV.format(l.feh[i], 3)}<br>
      anomaly ${LV.format(l.anomaly_score[i], 3)} · ${LV.escape(points.collections[points.collection[i]])}`;
    tooltip.style.left = `${px + 14}px`;
    tooltip.style.top = `${py + 14}px`;
    tooltip.hidden = false;
  }

  function select_(indices) {
    selection = indices;
    scatter.setSelection(indices);
    const list = document.getElementById("selection");
    document.getElementById("selection-count").textContent = `${indices.length} selected`;
    document.getElementById("send-selection").disabled = !indices.length;
    const l = points.labels;
    list.innerHTML = indices.length ? `<table><thead><tr><th>target</th><th>dataset</th><th>Teff</th><th>log g</th><th>[Fe/H]</th><th>anomaly</th></tr></thead><tbody>
      ${indices.slice(0, MAX_LISTED).map((i) => `<tr data-id="${LV.escape(points.id[i])}"><td>${LV.escape(points.target[i] || "")}</td>
        <td><a href="#" data-open="${LV.escape(points.id[i])}">${LV.escape(points.id[i])}</a></td><td>${LV.format(l.teff[i], 4)}</td>
        <td>${LV.format(l.logg[i], 3)}</td><td>${LV.format(l.feh[i], 3)}</td><td>${LV.format(l.anomaly_score[i], 3)}</td></tr>`).join("")}
      </tbody></table>${indices.length > MAX_LISTED ? `<p>… and ${indices.length - MAX_LISTED} more (all of them go over SAMP)</p>` : ""}` : "";
    for (const a of list.querySelectorAll("[data-open]")) {
      a.addEventListener("click", (event) => { event.preventDefault(); openDetail(a.dataset.open); });
    }
  }

  /** The selection as a TAP result (a VOTable URL of this service) sent to every table client. */
  async function sendSelection() {
    const status = document.getElementById("samp-status");
    LV.say(status, "preparing the table …");
    try {
      const ids = selection.map((i) => points.id[i]);
      const upload = LV.didTable(ids);
      const url = await LV.tapJob(
        "SELECT o.obs_publisher_did, o.target_name, o.obs_collection, o.s_ra, o.s_dec, o.teff, o.logg, o.feh, " +
        "o.rv, o.snr, o.access_url, m.x AS map_x, m.y AS map_y FROM TAP_UPLOAD.selection AS s " +
        "JOIN ivoa.obscore AS o ON o.obs_publisher_did = s.obs_publisher_did " +
        "JOIN ml.map AS m ON m.obs_publisher_did = o.obs_publisher_did " +
        `WHERE m.model_version = ${Number(points.model_version)} AND m.method = ${LV.quote(points.method)}`,
        { selection: upload });
      document.getElementById("selection-url").href = url;
      document.getElementById("selection-url").hidden = false;
      await LV.samp.sendTable(url, `latentvo map selection (${ids.length})`);
      LV.say(status, `sent ${ids.length} spectra`);
    } catch (error) {
      LV.say(status, error.message, true);
    }
  }

  async function openDetail(id) {
    const panel = document.getElementById("detail");
    panel.hidden = false;
    const i = points.id.indexOf(id);
    if (i >= 0) scatter.setSelection([...selection, i]);
    try {
      await SpectrumDetail.show(panel, id, model);
      panel.dataset.id = id;
    } catch (error) {
      panel.innerHTML = `<p class="error">${LV.escape(error.message)}</p>`;
    }
  }

  return { start };
})();

MapPage.start();

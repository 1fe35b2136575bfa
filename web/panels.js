// EditLab panels: pictures and sliders on the pack's nodes, in ComfyUI's own front end (extension API only).
// - Blendshape Edit: every coefficient as a slider, grouped by face region; presets, symmetric editing (the node's
//   own "symmetric" widget), reset; the face it was measured from when a Face Blendshapes node feeds it. The sliders
//   write the node's JSON "values" widget, which stays the only saved / queued state (the panel is not serialized).
// - SAE Features / SAE Slider: the direction's features (labels, weights) and the per-token activations of the run.
// - World-To-Image: each iteration's thumbnail, prompt, references (source, licence) and scores.
// - Attention Maps: one thumbnail per word.
// Run data comes from the pack's route GET /editlab/panel/<kind>?id=<id>; a node names its panel in its ui output
// ("editlab_panel": [{kind, id}]), which reaches the page in the "executed" message.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const UI_KEY = "editlab_panel";
const REGIONS = [
  ["Brows", (n) => n.startsWith("brow")], ["Eyes", (n) => n.startsWith("eye")],
  ["Cheeks", (n) => n.startsWith("cheek")], ["Nose", (n) => n.startsWith("nose")],
  ["Jaw", (n) => n.startsWith("jaw")], ["Mouth", (n) => n.startsWith("mouth")],
  ["Tongue", (n) => n.startsWith("tongue")], ["Other", () => true],
];
const RUN_PANELS = {
  EditLabSAEFeatures: "sae_features", EditLabSAESlider: "sae_features",
  EditLabWorldToImage: "agent_history", EditLabAttentionMaps: "attention_maps",
};
const latest = new Map(); // node id (string) -> {kind: id} of its last run's panels

const CSS = `
.editlab-panel{font:12px/1.3 sans-serif;color:var(--input-text,#ddd);background:var(--comfy-input-bg,#222);
  border-radius:6px;padding:6px;box-sizing:border-box;overflow:auto;width:100%;height:100%}
.editlab-panel .bar{display:flex;gap:6px;align-items:center;flex-wrap:wrap;margin-bottom:4px}
.editlab-panel button,.editlab-panel select{font-size:12px;background:#333;color:#eee;border:1px solid #555;
  border-radius:4px;padding:1px 6px}
.editlab-panel details{margin:2px 0}.editlab-panel summary{cursor:pointer;font-weight:bold}
.editlab-panel .row{display:grid;grid-template-columns:130px 1fr 36px;gap:4px;align-items:center}
.editlab-panel .row input{width:100%;margin:0}.editlab-panel .row .v{text-align:right;font-variant-numeric:tabular-nums}
.editlab-panel .row.measured .name{color:#8fd}.editlab-panel .row.from-preset .v{color:#fc6}
.editlab-panel img{max-width:100%;border-radius:4px;display:block}
.editlab-panel table{border-collapse:collapse;font-size:11px}.editlab-panel td,.editlab-panel th{padding:1px 3px;
  border:1px solid #333;text-align:right}.editlab-panel th{position:sticky;top:0;background:#222}
.editlab-panel .face img{width:240px}.editlab-panel .lab{color:#7e7}.editlab-panel .muted{color:#999}
.editlab-panel .card{display:grid;
  grid-template-columns:110px 1fr;gap:6px;border:1px solid #444;border-radius:4px;padding:4px;margin:4px 0}
.editlab-panel .card.best{border-color:#7e7}.editlab-panel .maps{display:flex;flex-wrap:wrap;gap:6px}
.editlab-panel .maps figure{margin:0;width:120px;text-align:center}.editlab-panel .maps img{width:120px}
.editlab-panel a{color:#8cf}
.editlab-panel .wbar{display:inline-block;height:8px;background:#7e7;vertical-align:middle}`;

function style() {
  if (document.getElementById("editlab-panels-css")) return;
  const el = document.createElement("style");
  el.id = "editlab-panels-css";
  el.textContent = CSS;
  document.head.appendChild(el);
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}

// A panel: a DOM widget that is never saved nor queued.
// Its height: widget.panelHeight (set once its content is known), at least minHeight.
function addPanel(node, name, element, minHeight) {
  style();
  const widget = node.addDOMWidget(name, "editlab_panel", element, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => widget.panelHeight ?? minHeight, getMaxHeight: () => 4000,
  });
  widget.serialize = false;
  return widget;
}

// Make room for a panel's content (``wanted`` px, at most maxHeight; the rest scrolls) and grow the node to fit.
// The height is estimated from the data, not measured: a node off screen has its DOM widget hidden (no layout).
function fit(node, widget, width, wanted, maxHeight) {
  widget.panelHeight = Math.max(widget.panelHeight ?? 0, Math.min(maxHeight, wanted));
  const need = node.computeSize();
  node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], need[1])]);
  node.setDirtyCanvas(true, true);
}

async function fetchPanel(ref) {
  const res = await api.fetchApi(`/editlab/panel/${encodeURIComponent(ref.kind)}?id=${encodeURIComponent(ref.id)}`,
                                 { cache: "no-store" });
  if (!res.ok) throw new Error(`${res.status}: ${(await res.json().catch(() => ({}))).error ?? res.statusText}`);
  return res.json();
}

// -- Blendshape panel ----------------------------------------------------------------------------------------------
let constants = null;
function blendshapeConstants() {
  constants ??= api.fetchApi("/editlab/blendshapes").then((r) => (r.ok ? r.json() : { names: [], presets: {} }))
    .catch(() => ({ names: [], presets: {} }));
  return constants;
}

function readValues(widget) {
  try {
    const parsed = JSON.parse(widget.value || "{}");
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return null; // not JSON: the panel leaves the text alone until it is fixed
  }
}

const partner = (name) => (name.endsWith("Left") ? name.slice(0, -4) + "Right"
  : name.endsWith("Right") ? name.slice(0, -5) + "Left" : null);

function blendshapePanel(node) {
  const w = (n) => node.widgets?.find((x) => x.name === n);
  const values = w("values");
  if (!values) return;
  const sliders = new Map(); // name -> {input, out, row}
  const status = h("span", { class: "muted" });
  const face = h("div", { class: "face", style: "display:none" });
  const presetPick = h("select", { title: "Load a preset's coefficients into the sliders (replaces them)" },
                       h("option", { value: "", text: "load preset…" }));
  const symmetric = h("input", { type: "checkbox", title: "Left/Right pairs move together (the node's symmetric)" });
  const groups = h("div");
  const root = h("div", { class: "editlab-panel editlab-blendshapes" },
    h("div", { class: "bar" }, presetPick, h("label", {}, symmetric, " symmetric"),
      h("button", { text: "reset", title: "All coefficients back to 0 (values {} and preset neutral)",
                    onclick: () => { write({}); const p = w("preset"); if (p) p.value = "neutral"; sync(); } }),
      status),
    face, groups);
  let lastText = null;
  let lastPreset = null;
  let known = { names: [], presets: {} };

  function write(current) {
    values.value = JSON.stringify(current);
    lastText = values.value;
    node.setDirtyCanvas(true, true);
  }

  function set(name, v) {
    const current = readValues(values) ?? {};
    const value = Math.min(1, Math.max(0, Math.round(Number(v) * 100) / 100));
    current[name] = value;
    const other = partner(name);
    if (w("symmetric")?.value && other && sliders.has(other)) current[other] = value;
    write(current);
    sync();
  }

  function sync() {
    symmetric.checked = !!w("symmetric")?.value;
    const current = readValues(values);
    status.textContent = current === null ? "values is not JSON: fix it to use the sliders" : "";
    const preset = known.presets[w("preset")?.value] ?? {};
    for (const [name, s] of sliders) {
      const v = Number(current?.[name] ?? preset[name] ?? 0);
      s.row.classList.toggle("from-preset", current?.[name] == null && preset[name] != null);
      if (document.activeElement !== s.input) s.input.value = String(v);
      s.out.textContent = v.toFixed(2);
    }
    lastText = values.value;
    lastPreset = w("preset")?.value;
  }

  symmetric.addEventListener("change", () => {
    const sw = w("symmetric");
    if (sw) { sw.value = symmetric.checked; sw.callback?.(sw.value, app.canvas, node); }
    node.setDirtyCanvas(true, true);
  });

  blendshapeConstants().then(({ names, presets }) => {
    known = { names, presets };
    for (const p of Object.keys(presets)) presetPick.append(h("option", { value: p, text: p }));
    presetPick.addEventListener("change", () => {
      const chosen = presets[presetPick.value];
      if (chosen) {
        write({ ...chosen });
        const p = w("preset");
        if (p) p.value = "neutral"; // the preset's values are now the sliders'; nothing applied twice
        sync();
      }
      presetPick.value = "";
    });
    const left = [...names];
    for (const [region, test] of REGIONS) {
      const mine = left.filter(test);
      if (!mine.length) continue;
      for (const n of mine) left.splice(left.indexOf(n), 1);
      const box = h("details", { open: "", "data-region": region.toLowerCase() },
                    h("summary", { text: `${region} (${mine.length})` }));
      for (const name of mine) {
        const input = h("input", { type: "range", min: "0", max: "1", step: "0.01", value: "0", "data-name": name,
                                   title: name });
        const out = h("span", { class: "v", text: "0.00" });
        const row = h("div", { class: "row" }, h("span", { class: "name", text: name }), input, out);
        input.addEventListener("input", () => set(name, input.value));
        // LiteGraph must not take the pointer (the canvas would drag the node instead of the slider).
        for (const kind of ["pointerdown", "mousedown", "wheel"]) {
          input.addEventListener(kind, (e) => e.stopPropagation());
        }
        sliders.set(name, { input, out, row });
        box.append(row);
      }
      groups.append(box);
    }
    sync();
  });

  // Small at least (a workflow saved with a smaller node keeps its size: the panel scrolls); a new node is made
  // tall enough to show it (onNodeCreated below).
  const panel = addPanel(node, "blendshape panel", root, 48);
  node.__editlabBlendshapes = {
    sync, root,
    showFace(data) { // data: the Face Blendshapes panel (thumbnail and measured values), or null
      face.replaceChildren();
      face.style.display = data ? "" : "none";
      for (const [name, s] of sliders) {
        const m = data?.values?.[name];
        s.row.classList.toggle("measured", m != null && m > 0.05);
        s.input.title = m != null ? `${name}: measured ${Number(m).toFixed(2)}` : name;
      }
      if (data) face.append(h("img", { src: data.image, alt: "the face these blendshapes were measured from" }),
                            h("div", { class: "muted", text: "measured from this face (highlighted: above 0.05)" }));
      if (data) fit(node, panel, 460, 560, 560);
    },
    dirty: () => values.value !== lastText || w("preset")?.value !== lastPreset,
  };
  const draw = node.onDrawForeground;
  node.onDrawForeground = function () { // the values text was edited by hand: the sliders follow
    if (node.__editlabBlendshapes.dirty()) sync();
    return draw?.apply(this, arguments);
  };
}

function upstreamFace(node) {
  const input = node.inputs?.find((i) => i.name === "blendshapes");
  const link = input?.link != null ? node.graph?.links?.[input.link] ?? node.graph?.links?.get?.(input.link) : null;
  return link ? latest.get(String(link.origin_id))?.face : null;
}

async function refreshFaces() {
  for (const node of app.graph?.nodes ?? []) {
    if (!node.__editlabBlendshapes) continue;
    const ref = upstreamFace(node);
    if (!ref) continue;
    try {
      node.__editlabBlendshapes.showFace(await fetchPanel({ kind: "face", id: ref }));
    } catch (e) {
      console.warn("EditLab: no face panel", e.message);
    }
  }
}

// -- run-data panels -----------------------------------------------------------------------------------------------
function heat(v, max) {
  const t = max > 0 ? Math.min(1, v / max) : 0;
  return `rgba(255,${Math.round(180 - 120 * t)},40,${(0.08 + 0.85 * t).toFixed(2)})`;
}

function renderFeatures(data) {
  const head = h("div", { class: "bar" }, h("b", { text: data.node === "slider" ? "SAE Slider" : "SAE Features" }),
    h("span", { class: "muted", text: `SAE ${data.sae}` }),
    data.word ? h("span", { text: `word "${data.word}", strength ${data.strength}, ${data.schedule}` }) : null);
  const parts = [head];
  if (data.direction) {
    const maxW = Math.max(1e-9, ...data.direction.features.map((f) => Math.abs(f.weight)));
    const list = h("table", { class: "direction" },
      h("tr", {}, h("th", { text: "feature" }), h("th", { text: "weight" }), h("th", { text: "label" })));
    for (const f of data.direction.features.slice(0, 24)) {
      list.append(h("tr", {}, h("td", { text: `#${f.id}` }),
        h("td", {}, h("span", { class: "wbar", style: `width:${Math.round(60 * Math.abs(f.weight) / maxW)}px` }),
          f.weight == null ? " n/a" : ` ${f.weight.toFixed(3)}`),
        h("td", { class: "lab", text: (f.labels ?? []).join(", ") })));
    }
    parts.push(h("div", { text: `direction "${data.direction.name}": ${data.direction.count} features` }), list);
  }
  if (data.tokens?.length) {
    const labelled = new Set(data.tokens.flatMap((r) => r.features.filter((f) => f.labels?.length).map((f) => f.id)));
    for (const f of data.direction?.features ?? []) labelled.add(f.id);
    const cols = data.columns.slice(0, 32);
    const max = Math.max(1e-9, ...data.tokens.flatMap((r) => r.features.map((f) => f.activation)));
    const table = h("table", { class: "activations" },
      h("tr", {}, h("th", { text: "token" }), ...cols.map((c) => h("th", { class: labelled.has(c) ? "lab" : "",
                                                                        text: `#${c}` }))));
    for (const row of data.tokens) {
      const by = Object.fromEntries(row.features.map((f) => [f.id, f.activation]));
      table.append(h("tr", {}, h("td", { text: row.token }), ...cols.map((c) => h("td", {
        style: `background:${heat(by[c] ?? 0, max)}`, title: `${row.token} · #${c}: ${by[c] ?? 0}`,
        text: by[c] ? by[c].toFixed(2) : "" }))));
    }
    parts.push(h("div", { text: "per-token activations (green: features a direction uses)" }), table);
  }
  return parts;
}

function renderHistory(data) {
  const parts = [h("div", { class: "bar" }, h("b", { text: "Agent history" }),
    h("span", { text: `best: iteration ${data.best} (score ${data.best_score ?? "n/a"}), stopped: ${data.stopped}` }))];
  for (const s of data.skipped ?? []) parts.push(h("div", { class: "muted", text: s }));
  for (const it of data.iterations) {
    const scores = Object.entries(it.scores).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(3) : v}`);
    const refs = h("ul", {});
    for (const r of it.references) {
      refs.append(h("li", {}, r.page || (r.url || "").startsWith("http")
        ? h("a", { href: r.page || r.url, target: "_blank", rel: "noopener noreferrer", text: r.title || r.url })
        : h("span", { text: r.title || r.url || "reference" }),
        h("span", { class: "muted", text: ` — ${r.source ?? "?"}, ${r.licence ?? "licence unknown"}` })));
    }
    parts.push(h("div", { class: `card${it.index === data.best ? " best" : ""}`, "data-iteration": String(it.index) },
      h("img", { src: it.thumbnail, alt: `iteration ${it.index}` }),
      h("div", {}, h("div", {}, h("b", { text: `#${it.index} ` }), h("span", { class: "prompt", text: it.prompt })),
        h("div", { class: "scores", text: scores.length ? scores.join(" · ") : "not scored" }),
        it.missing_keywords.length
          ? h("div", { class: "muted", text: `missing: ${it.missing_keywords.join(", ")}` }) : null,
        it.references.length ? refs : h("div", { class: "muted", text: "no references" }),
        ...it.notes.map((n) => h("div", { class: "muted", text: n })))));
  }
  return parts;
}

function renderMaps(data) {
  return [h("div", { class: "bar" }, h("b", { text: "Attention per word" })),
    h("div", { class: "maps" }, ...data.maps.map((m) => h("figure", { "data-word": m.word },
      h("img", { src: m.image, alt: `attention map of "${m.word}"` }), h("figcaption", { text: m.word }))))];
}

const RENDER = { sae_features: renderFeatures, agent_history: renderHistory, attention_maps: renderMaps };
// Least width, most height. A node is made wider only when it is narrower than 360 px (a wider one would cover
// its neighbours in a saved layout); tables scroll sideways.
const SIZE = { sae_features: [360, 560], agent_history: [360, 640], attention_maps: [300, 360] };
const ROW = 19; // px, one table row or line of text
const HEIGHT = { // the panel's natural height, from its data
  sae_features: (d) => 40 + (d.direction ? ROW * (2 + Math.min(24, d.direction.features.length)) : 0)
    + (d.tokens?.length ? ROW * (2 + d.tokens.length) : 0),
  agent_history: (d) => 60 + 2 * ROW * (d.skipped?.length ?? 0) + d.iterations.reduce((h, it) => h + Math.max(
    120, ROW * (6 + 2 * it.references.length + 2 * it.notes.length + (it.missing_keywords.length ? 1 : 0))), 0),
  attention_maps: (d) => 50 + 160 * Math.ceil(d.maps.length / 3),
};

async function showRun(node, ref) {
  let panel = node.widgets?.find((x) => x.name === "editlab run panel");
  if (!panel) {
    panel = addPanel(node, "editlab run panel", h("div", { class: "editlab-panel", "data-kind": ref.kind }), 200);
  }
  const root = panel.element;
  const [width, maxHeight] = SIZE[ref.kind];
  try {
    const data = await fetchPanel(ref);
    root.replaceChildren(...RENDER[ref.kind](data));
    root.dataset.panelId = ref.id;
    fit(node, panel, width, HEIGHT[ref.kind](data), maxHeight);
  } catch (e) {
    root.replaceChildren(h("div", { class: "muted", text: `no panel data (${e.message}): run the workflow again` }));
    fit(node, panel, width, 60, maxHeight);
  }
}

api.addEventListener("executed", ({ detail }) => {
  const refs = detail?.output?.[UI_KEY];
  if (!Array.isArray(refs)) return;
  const id = String(detail.display_node ?? detail.node);
  const mine = latest.get(id) ?? {};
  for (const r of refs) if (r && typeof r.kind === "string" && typeof r.id === "string") mine[r.kind] = r.id;
  latest.set(id, mine);
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  const kind = node && RUN_PANELS[node.type];
  if (kind && mine[kind]) showRun(node, { kind, id: mine[kind] });
  if (mine.face) refreshFaces();
});

app.registerExtension({
  name: "editlab.panels",
  // Another workflow opens: node ids start over, so the last runs' panels belong to nodes that are gone.
  async beforeConfigureGraph() {
    latest.clear();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "EditLabBlendshapeEdit") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      blendshapePanel(this);
      // A node added by hand gets room for the panel; one loaded from a workflow keeps its saved size (it is
      // configured in the same task, before this timer runs).
      setTimeout(() => {
        if (this.__editlabConfigured) return;
        const panel = this.widgets?.find((x) => x.name === "blendshape panel");
        if (panel) panel.panelHeight = 420;
        this.setSize([Math.max(this.size[0], 460), Math.max(this.size[1], this.computeSize()[1])]);
        this.setDirtyCanvas(true, true);
      }, 0);
      return r;
    };
    const configure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      this.__editlabConfigured = true;
      return configure?.apply(this, arguments);
    };
    const connections = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = connections?.apply(this, arguments);
      if (this.__editlabBlendshapes) {
        const ref = upstreamFace(this);
        if (!ref) this.__editlabBlendshapes.showFace(null);
        else refreshFaces();
      }
      return r;
    };
  },
});

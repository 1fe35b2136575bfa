// EditLab front-end extension.
// - Tiny Models: coloured, so nobody mistakes random-weight output for a result.
// - Blendshape Edit, SAE, World-To-Image and Attention Maps panels: web/panels.js.
// - Templates browser: the pack's workflows in their intended order (the tour first), with the titles and
//   descriptions of templates.json (written by scripts/make_workflows.py). ComfyUI's front end (1.32) lists a custom
//   pack's templates in the server's file-system order and shows each file name as title and description.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK = import.meta.url.match(/\/extensions\/([^/]+)\//)?.[1] ?? "editlab";
const cards = fetch(new URL("./templates.json", import.meta.url)).then((r) => (r.ok ? r.json() : []))
  .catch(() => []);

// The order: a public API method, wrapped.
const getWorkflowTemplates = api.getWorkflowTemplates.bind(api);
api.getWorkflowTemplates = async function () {
  const listed = await getWorkflowTemplates();
  const order = (await cards).map((c) => c.name);
  const rank = (n) => (order.includes(n) ? order.indexOf(n) : order.length);
  if (Array.isArray(listed?.[PACK])) {
    listed[PACK] = [...listed[PACK]].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }
  return listed;
};

// Titles and descriptions: the front end builds a custom pack's cards with title = description = file name and has
// no field for them, so the cards of this pack are given theirs once the template store has loaded. If the store
// is not where this front end version keeps it, the file names stay (nothing else changes).
function templateStore() {
  const pinia = document.querySelector("#vue-app")?.__vue_app__?.config?.globalProperties?.$pinia;
  return pinia?._s?.get("workflowTemplates");
}

async function titleCards(store) {
  const byName = Object.fromEntries((await cards).map((c) => [c.name, c]));
  for (const t of store.enhancedTemplates ?? []) {
    const card = t.sourceModule === PACK && byName[t.name];
    if (card) Object.assign(t, { title: card.title, description: card.description, searchableText:
      `${card.title} ${card.description} ${t.name} ${PACK} extension` });
  }
}

function hookTemplateStore() {
  const store = templateStore();
  if (!store || store.__editlabTitled) return !!store;
  const load = store.loadWorkflowTemplates;
  store.loadWorkflowTemplates = async function (...args) {
    const result = await load.apply(this, args);
    await titleCards(store);
    return result;
  };
  store.__editlabTitled = true;
  if (store.isLoaded) titleCards(store);
  return true;
}

app.registerExtension({
  name: "editlab.core",
  async setup() {
    if (!hookTemplateStore()) setTimeout(hookTemplateStore, 1000);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "EditLabTinyModels") {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created?.apply(this, arguments);
        this.color = "#5a3b1d";
        this.bgcolor = "#3b2612";
        return r;
      };
    }
  },
});

// EditLab front-end extension: marks nodes that run on random stand-in weights, so nobody mistakes their output.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "editlab.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "EditLabTinyModels") return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = "#5a3b1d";
      this.bgcolor = "#3b2612";
      return r;
    };
  },
});

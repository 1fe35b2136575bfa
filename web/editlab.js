// EditLab front-end extension.
// - Tiny Models: coloured, so nobody mistakes random-weight output for a result.
// - Blendshape Edit: a coefficient picker and a slider that write into the node's JSON "values" widget (the widget
//   stays the source of truth, so saved workflows and the API see plain JSON). The helper widgets are not saved.
import { app } from "../../scripts/app.js";

const ARKIT = ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
  "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
  "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
  "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
  "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
  "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
  "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
  "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
  "noseSneerLeft", "noseSneerRight"];

function readValues(widget) {
  try {
    const parsed = JSON.parse(widget.value || "{}");
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

function helper(widget) {
  widget.serialize = false; // not part of widgets_values
  widget.options = { ...(widget.options || {}), serialize: false }; // not sent to /prompt
  return widget;
}

app.registerExtension({
  name: "editlab.core",
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
    if (nodeData.name === "EditLabBlendshapeEdit") {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created?.apply(this, arguments);
        const values = this.widgets?.find((w) => w.name === "values");
        if (!values) return r;
        const pick = helper(this.addWidget("combo", "coefficient", ARKIT[43], () => {
          slider.value = Number(readValues(values)[pick.value] ?? 0);
          this.setDirtyCanvas(true, true);
        }, { values: ARKIT }));
        const slider = helper(this.addWidget("number", "coefficient value", 0, (v) => {
          const current = readValues(values);
          current[pick.value] = Math.min(1, Math.max(0, Math.round(v * 100) / 100));
          values.value = JSON.stringify(current);
          this.setDirtyCanvas(true, true);
        }, { min: 0, max: 1, step: 0.1, precision: 2 }));
        return r;
      };
    }
  },
});

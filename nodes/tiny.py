"""EditLabTinyModels: seeded tiny stand-ins for real checkpoints, for dry runs on a CPU."""
from comfy_api.latest import io

from ..models.tiny import ARCHITECTURES, build_tiny_models
from .common import CATEGORY, EditLabInputError, EditLabNode


class EditLabTinyModels(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTinyModels",
            display_name="Tiny Models (random weights)",
            category=f"{CATEGORY}/Utils",
            description=(
                "Builds ComfyUI's own model classes (Flux, Flux Fill, SD3, SDXL, SD1.5, Wan 2.1 I2V) at tiny sizes with RANDOM "
                "weights drawn from the seed, with the real tokenizers. Images made with them are meaningless noise: "
                "use them to dry-run a workflow on a CPU in seconds, never for results."
            ),
            inputs=[
                io.Combo.Input("architecture", options=list(ARCHITECTURES), default="flux",
                               tooltip="Which model family's classes to build."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random weights: the same seed gives the same weights, bit for bit."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, architecture, seed) -> io.NodeOutput:
        if architecture not in ARCHITECTURES:
            raise EditLabInputError("architecture", f"one of {', '.join(ARCHITECTURES)}", architecture)
        tiny = build_tiny_models(architecture, seed)
        return io.NodeOutput(tiny.model, tiny.clip, tiny.vae)


NODES = [EditLabTinyModels]

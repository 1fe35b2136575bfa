"""Blendshape encoding time per image on this CPU (MediaPipe face landmarker, 52 ARKit coefficients + head pose),
for a single portrait and for a wide two-face picture (which adds the windowed search)."""
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if "editlab" not in sys.modules:
    pkg = types.ModuleType("editlab")
    pkg.__path__ = [str(ROOT)]
    sys.modules["editlab"] = pkg

from editlab.models.expression.blendshapes import FaceEncoder, landmarker_path  # noqa: E402


def median_ms(encoder, image, repeats=20):
    encoder.faces(image)  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        encoder.faces(image)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    import matplotlib
    from PIL import Image
    from skimage import data

    encoder = FaceEncoder(landmarker_path())
    astronaut = data.astronaut()
    grace = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                       .convert("RGB").resize((512, 512)))
    portrait = median_ms(encoder, astronaut)
    pair = median_ms(encoder, np.concatenate([astronaut, grace], 1))
    encoder.close()
    print(f"blendshapes per image, CPU: 512x512 portrait {portrait:.1f} ms; 1024x512 two-face picture "
          f"{pair:.1f} ms (windowed search: {pair / portrait:.1f}x)")

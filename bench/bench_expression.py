"""Blendshape encoding time per image on this CPU (MediaPipe face landmarker, 52 ARKit coefficients + head pose),
for a single portrait and for a wide two-face picture (which adds the windowed search); and what the trainers' square
face crop (models/expression/dataset.py) adds per photo, as a fraction of the encoding it follows."""
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402

from editlab.models.expression.blendshapes import FaceEncoder, landmarker_path  # noqa: E402
from editlab.models.expression.dataset import face_crop  # noqa: E402


def crop_ms(faces, image, repeats=sized(20, 2)):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        face_crop(image, faces, 512)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def median_ms(encoder, image, repeats=sized(20, 2)):
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
    crop = crop_ms(encoder.faces(astronaut), astronaut)
    encoder.close()
    figure("portrait_ms", portrait, f"{portrait:.1f} ms", "blendshapes of a 512x512 portrait, CPU")
    figure("two_faces_over_portrait", pair / portrait, f"{pair / portrait:.1f}x",
           "a 1024x512 two-face picture (windowed search) over the portrait")
    figure("crop_over_encoding", crop / portrait, f"{crop / portrait:.2f}x",
           "the training's square face crop over the encoding")
    print(f"blendshapes per image, CPU: 512x512 portrait {portrait:.1f} ms; 1024x512 two-face picture "
          f"{pair:.1f} ms (windowed search: {pair / portrait:.1f}x)")
    print(f"square face crop to 512x512 for training: {crop:.1f} ms per photo ({crop / portrait:.2f}x the encoding)")

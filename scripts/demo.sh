#!/usr/bin/env bash
# The main job: run the tour workflow on a headless ComfyUI with the pack and write its outputs to out/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${EDITLAB_OUT:-$repo/out}"
echo "EditLab tour: no real weights are used here; EditLabTinyModels builds the real architectures with random"
echo "weights, so the images are noise that proves the graph runs end to end."
uploads=()
for f in workflows/input/*; do uploads+=(--upload "$f"); done  # the tour's photo and product images
# The tour trains its SAE in the graph (node 9) and saves it as models/sae/editlab_tour_sae.safetensors; a saving node
# refuses to replace an existing file unless told to, and a second demo on the same ComfyUI replaces the tour's own SAE.
./editlab run workflows/editlab_tour.json --out "$out" "${uploads[@]}" --set 9.overwrite=true
echo "outputs are in $out/"

#!/usr/bin/env bash
# The main job: run the tour workflow on a headless ComfyUI with the pack and write its outputs to out/.
# The tour loads real weights with ComfyUI's stock loaders; where those files are missing (as on a fresh machine)
# the client swaps the loaders for EditLabTinyModels (--tiny-if-missing), scales the real sizes and steps down for
# them, and says each swap and each change (client/tiny.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${EDITLAB_OUT:-$repo/out}"
echo "EditLab tour: with no real weights installed, EditLabTinyModels stands in for the model loaders: the real"
echo "architectures with random weights, so the images are noise that proves the graph runs end to end. The tour"
echo "ships at the real sizes and steps (1024 px, 20-50 steps); for the tiny models they are scaled down, and each"
echo "change is printed as 'node ID CLASS: INPUT OLD -> NEW'."
./editlab run workflows/editlab_tour.json --tiny-if-missing --out "$out"  # the example inputs are in the server's input folder
echo "outputs are in $out/"

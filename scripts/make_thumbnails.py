"""Thumbnails for the templates browser: workflows/NAME.jpg from the browser test's screenshot of NAME as opened.

Run the browser tier first (it saves out/test-artifacts/browser/NAME.png), then: python scripts/make_thumbnails.py
The README's tour picture (docs/editlab_tour.png) is the same screenshot.
"""
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "out" / "test-artifacts" / "browser"
# The cards are square: the graph part of the screenshot (right of the Note, below the menu), 880 px square.
CROP = (490, 110, 1370, 990)
SIZE = (512, 512)


def main():
    names = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    missing = [n for n in names if not (SHOTS / f"{n}.png").is_file()]
    if missing:
        raise SystemExit(f"no screenshot for {missing}: run pytest tests/browser first")
    for name in names:
        with Image.open(SHOTS / f"{name}.png") as im:
            im.convert("RGB").crop(CROP).resize(SIZE, Image.LANCZOS).save(ROOT / "workflows" / f"{name}.jpg", quality=82)
        print(f"wrote workflows/{name}.jpg")
    (ROOT / "docs").mkdir(exist_ok=True)
    with Image.open(SHOTS / "editlab_tour.png") as im:
        im.convert("RGB").save(ROOT / "docs" / "editlab_tour.png", optimize=True)
    print("wrote docs/editlab_tour.png")


if __name__ == "__main__":
    main()

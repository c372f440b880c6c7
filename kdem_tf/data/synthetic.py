"""`python -m kdem_tf.data.synthetic`: a synthetic stand-in of a dataset, in its published layout.

    python -m kdem_tf.data.synthetic --layout sysu --out data/sysu_synth --montage sysu.png

Not a benchmark: it lets readers, input pipeline and training run without the real data.
Each identity gets a seeded body shape, garment patterns and colours and a carried object;
visible images show colours, infrared ones a non-linear "heat" map of the same scene (skin
hot, fabric by emissivity, background cool), blurred and noisy (kdem_tf/data/synthetic_people.py).
Every image draws from a Generator seeded by (seed, layout, id, camera, index), so output does
not depend on order. The layouts are the datasets' own (`Dataset.generate_synthetic`, kdem_tf/datasets/).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from kdem_tf import cli_help, datasets


def write_montage(cells: List[List[str]], path: str, zoom: int = 2) -> str:
    """A PNG grid of image files, one row per list (a missing file stays blank)."""
    w, h = Image.open(next(p for row in cells for p in row if os.path.exists(p))).size
    sheet = Image.new("RGB", (max(map(len, cells)) * (w + 2), len(cells) * (h + 2)), (255, 255, 255))
    for r, row in enumerate(cells):
        for c, p in enumerate(row):
            if os.path.exists(p):  # a camera an id misses stays blank
                sheet.paste(Image.open(p).convert("RGB"), (c * (w + 2), r * (h + 2)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.resize((sheet.width * zoom, sheet.height * zoom), Image.NEAREST).save(path)
    return path


def _size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(t) for t in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be HxW, e.g. 64x32, got {text!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    layouts = [name for name in datasets.names() if datasets.get(name).synthetic_defaults]
    defaults = {name: datasets.get(name).synthetic_defaults for name in layouts}
    parser = cli_help.parser("kdem_tf.data.synthetic", __doc__.split("\n")[0])
    parser.add_argument("--layout", choices=layouts, **cli_help.required("the dataset whose published layout to write"))
    parser.add_argument("--out", **cli_help.required("output folder (absent or empty)"))
    parser.add_argument("--identities", type=int, help="number of ids (default: " + ", ".join(
        f"{n} {d['identities']}" for n, d in defaults.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="seed of every image's random draws")
    parser.add_argument("--image-size", type=_size, default=(64, 32), help="HxW of the written images (default 64x32)")
    parser.add_argument("--images-per-camera", type=int, help="images per id and camera (default: " + ", ".join(
        f"{n} {d['images_per_camera']}" for n, d in defaults.items()) + ")")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--montage", help="also write a PNG montage of the first ids here (layouts that draw one)")
    args = parser.parse_args(argv)
    dataset = datasets.get(args.layout)
    try:
        root = dataset.generate_synthetic(args.out, args.identities, args.seed, args.image_size,
                                          args.images_per_camera, args.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.layout} layout to {root}")
    cells = dataset.montage(root, 6) if args.montage else []
    if cells:
        print(f"montage: {write_montage(cells, args.montage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic stand-in for SYSU-MM01, RegDB and LLCM (`synthetic_llcm`), in their published layouts.

Not a benchmark: it lets readers, input pipeline and training run without the real data.
Each identity gets a seeded body shape, garment patterns and colours and a carried object;
visible images show colours, infrared ones a non-linear "heat" map of the same scene (skin
hot, fabric by emissivity, background cool), blurred and noisy. Every image draws from a
Generator seeded by (seed, layout, id, camera, index), so output does not depend on order.

    python -m kdem_tf.data.synthetic --layout sysu --out data/sysu_synth --montage sysu.png
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import glob
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
PATTERNS = ("solid", "stripes", "checks", "blocks")
SUPERSAMPLE = 2  # rendered at 2x and averaged down: anti-aliased edges
_SYSU, _REGDB = 0, 1  # layout keys: the two layouts draw different people
_PERSON, _CAMERA, _POSE, _LIGHT, _SPLIT, _COVER = range(1, 7)  # keys of the random streams
Size = Tuple[int, int]  # (height, width)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _emissivity(rgb: np.ndarray) -> float:
    """IR brightness of a fabric colour: non-linear in hue/saturation/value, not a grey conversion."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    e = 0.3 + 0.45 * (1.0 - v) ** 1.7 + 0.22 * s * np.cos(2 * np.pi * (h - 0.08))
    return float(np.clip(e, 0.1, 0.85))


@dataclasses.dataclass(frozen=True)
class Garment:
    pattern: str
    freq: float
    phase: float
    vertical: bool
    colours: np.ndarray  # (2, 3) RGB in [0, 1]
    heat: np.ndarray     # (2,) infrared intensity of the two colours


@dataclasses.dataclass(frozen=True)
class Person:
    height: float   # figure height / frame height
    width: float    # shoulder width / frame width
    head: float     # head radius / figure height
    leg_gap: float  # gap between the legs / shoulder width
    waist: float    # waist height / figure height
    upper: Garment
    lower: Garment
    skin: np.ndarray
    hair: np.ndarray
    carry: str      # "none", "bag" or "backpack"
    side: int       # -1 left, +1 right
    carry_colour: np.ndarray
    gender: str


def _garment(rng: np.random.Generator) -> Garment:
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    a, b = rng.uniform(0.05, 0.95, (2, 3))
    for _ in range(64):  # two colours that differ both in colour and in IR, so patterns survive in IR
        if abs(_emissivity(a) - _emissivity(b)) > 0.2 and np.abs(a - b).sum() > 0.45:
            break
        b = rng.uniform(0.05, 0.95, 3)
    heat = np.array([0.3 + 0.6 * _emissivity(c) for c in (a, b)])
    return Garment(pattern, float(rng.uniform(2.0, 4.0)), float(rng.uniform(0, 1)), bool(rng.random() < 0.3),
                   np.stack([a, b]), heat)


def _person(seed: int, layout: int, pid: int) -> Person:
    rng = _rng(seed, layout, _PERSON, pid)
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.45, 1.1)
    return Person(height=rng.uniform(0.8, 0.94), width=rng.uniform(0.3, 0.5),
                  head=rng.uniform(0.06, 0.085), leg_gap=rng.uniform(0.05, 0.3),
                  waist=rng.uniform(0.45, 0.56), upper=_garment(rng), lower=_garment(rng),
                  skin=np.clip(skin, 0, 1), hair=rng.uniform(0.02, 0.45) * np.array([1, 0.85, 0.7]),
                  carry=("none", "bag", "backpack")[rng.integers(3)], side=int(rng.choice([-1, 1])),
                  carry_colour=rng.uniform(0.05, 0.9, 3), gender=("female", "male")[rng.integers(2)])


def _camera(seed: int, layout: int, camera: int, infrared: bool) -> Dict[str, np.ndarray]:
    """Fixed per camera: background, lighting, viewpoint and framing habits."""
    rng = _rng(seed, layout, _CAMERA, camera)
    bg = 0.5 * rng.uniform(0.25, 0.75, (3, 1)) + 0.5 * rng.uniform(0.1, 0.9, (3, 3))  # muted colours
    return dict(bg=bg, tex=rng.uniform([0.5, 0.5, 0, 0.01], [4, 4, 1, 0.06]),
                floor=rng.uniform(0.72, 0.95), gain=rng.uniform(0.8, 1.2, 3), bright=rng.uniform(0.85, 1.15),
                contrast=rng.uniform(0.75, 1.2), gamma=rng.uniform(0.75, 1.3), flip=rng.uniform(0.2, 0.8),
                shear=rng.uniform(-0.12, 0.12), scale=rng.uniform(0.93, 1.03), top=rng.uniform(0.03, 0.07),
                ambient=rng.uniform(0.05, 0.3), columns=rng.normal(0, 0.02 if infrared else 0.0, 4096))


def _pattern(g: Garment, gu: np.ndarray, gv: np.ndarray) -> np.ndarray:
    """True where the garment shows its second colour; gu, gv in [0, 1] over the garment."""
    t = gu if g.vertical else gv
    if g.pattern == "stripes":
        return (t * g.freq + g.phase) % 1.0 < 0.5
    if g.pattern == "checks":
        return (np.floor(gu * g.freq * 0.7 + g.phase) + np.floor(gv * g.freq + g.phase)) % 2 == 1
    if g.pattern == "blocks":
        return t < 0.25 + 0.5 * g.phase
    return np.zeros_like(gu, dtype=bool)


def _render(p: Person, cam: Dict, rng: np.random.Generator, size: Size) -> Tuple[np.ndarray, np.ndarray]:
    """Draws one view of a person; returns (rgb HxWx3, heat HxW) in [0, 1], supersampled."""
    H, W = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    Y, X = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    Xv = W - X if rng.random() < cam["flip"] else X  # viewpoint: seen from the other side
    Xv = Xv - (cam["shear"] + rng.normal(0, 0.03)) * (Y - H / 2)
    scale = cam["scale"] * rng.uniform(0.96, 1.04)  # detector crops: roughly fixed scale
    fh, fw = p.height * scale * H, p.width * scale * W
    top = (cam["top"] + rng.uniform(-0.02, 0.02)) * H
    u, v = (Xv - W * (0.5 + rng.uniform(-0.07, 0.07))) / fw, (Y - top) / fh
    # Background: camera gradient + texture + floor, a little different every image.
    bg, (fx, fy, ph, amp) = cam["bg"], cam["tex"]
    ramp = np.clip(Y / H, 0, 1)[..., None]
    texture = amp * np.sin(2 * np.pi * (fx * X / W + fy * Y / H + ph + rng.uniform(0, 0.3)))[..., None]
    rgb = (1 - ramp) * bg[0] + ramp * bg[1] + texture
    rgb = np.where((Y / H > cam["floor"])[..., None], bg[2] + 0.5 * texture, rgb)
    heat = cam["ambient"] + 0.1 * ramp[..., 0] + 0.5 * texture[..., 0]

    def paint(mask: np.ndarray, colour, warmth) -> None:
        rgb[mask] = colour[mask] if np.ndim(colour) == 3 else colour
        heat[mask] = warmth[mask] if np.ndim(warmth) == 2 else warmth

    def garment(g: Garment, gu: np.ndarray, gv: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        second = _pattern(g, gu, gv)
        return np.where(second[..., None], g.colours[1], g.colours[0]), np.where(second, g.heat[1], g.heat[0])

    shoulder, waist, swing, spread = 2 * p.head, p.waist, rng.uniform(-0.35, 0.35), rng.uniform(0, 0.25)
    carry_heat = 0.15 + 0.3 * _emissivity(p.carry_colour)  # carried things are not body-warmed
    side_u = p.side * u
    if p.carry == "backpack":  # behind the torso: only its side shows
        paint((side_u > 0.1) & (side_u < 0.68) & (v > shoulder + 0.03) & (v < waist - 0.04),
              p.carry_colour, carry_heat)
    half = (1 - p.leg_gap) / 4
    for s in (-1, 1):
        centre = s * (p.leg_gap / 2 + half) * (1 + spread * (v - waist) / (1 - waist))
        leg = (np.abs(u - centre) < half) & (v >= waist) & (v < 0.96)
        paint(leg, *garment(p.lower, (u + 0.5), (v - waist) / (0.96 - waist)))
        paint((np.abs(u - centre) < half * 1.1) & (v >= 0.96) & (v < 1.0), np.array([0.1, 0.08, 0.07]), 0.4)
    gv = (v - shoulder) / (waist - shoulder)
    torso = (np.abs(u) < 0.5 - 0.07 * gv) & (gv >= 0) & (gv < 1.0)
    paint(torso, *garment(p.upper, u + 0.5, gv))
    for s in (-1, 1):
        arm_u = s * u - 0.5 - 0.06 - swing * s * np.clip(v - shoulder, 0, None)
        arm = (np.abs(arm_u) < 0.07) & (v > shoulder + 0.01) & (v < waist + 0.1)
        paint(arm & (v < waist + 0.06), *garment(p.upper, u + 0.5, gv))
        paint(arm & (v >= waist + 0.06), p.skin, 0.9)
    hu, hv = u * fw / (fh * p.head * 0.8), (v - p.head) / p.head
    head = hu ** 2 + hv ** 2 < 1
    paint(head, p.skin, 0.95)  # skin: the hottest thing in the scene
    paint(head & (hv < -0.25), p.hair, 0.6)
    paint((np.abs(u) < 0.12) & (v >= 2 * p.head - 0.02) & (v < shoulder + 0.01), p.skin, 0.9)
    if p.carry == "bag":
        paint((side_u > 0.42) & (side_u < 0.85) & (np.abs(v - waist - 0.01) < 0.11), p.carry_colour, carry_heat)
    return np.clip(rgb, 0, 1), np.clip(heat, 0, 1)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k, pad = k / k.sum(), np.pad(img, r, mode="edge")
    rows = sum(w * pad[:, i:i + img.shape[1]] for i, w in enumerate(k))
    return sum(w * rows[i:i + img.shape[0], :] for i, w in enumerate(k))


def _downsample(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // SUPERSAMPLE, a.shape[1] // SUPERSAMPLE
    return a.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE, *a.shape[2:]).mean(axis=(1, 3))


def render_image(seed: int, layout: int, pid: int, camera: int, pose_key: Tuple[int, int], infrared: bool,
                 size: Size, geometry_camera: Optional[int] = None) -> np.ndarray:
    """One HxWx3 uint8 image.

    Args:
        pose_key: (camera, index) seeding the pose; paired views share it.
        geometry_camera: camera whose viewpoint/framing to use (default: `camera`).
    """
    cam = _camera(seed, layout, camera, infrared)
    if geometry_camera is not None:  # a co-registered camera pair sees the same geometry
        geo = _camera(seed, layout, geometry_camera, infrared)
        cam.update({k: geo[k] for k in ("flip", "shear", "scale", "top")})
    rgb, heat = _render(_person(seed, layout, pid), cam, _rng(seed, layout, _POSE, pid, *pose_key), size)
    rng = _rng(seed, layout, _LIGHT, pid, camera, pose_key[1])
    gamma = cam["gamma"] * rng.uniform(0.9, 1.1)
    if infrared:  # a thermal sensor: optics blur, per-column fixed-pattern noise, read noise, no colour
        img = _blur(_downsample(heat), rng.uniform(0.5, 0.9))
        img = (img - 0.5) * cam["contrast"] + 0.5 + cam["columns"][:img.shape[1]] + rng.normal(0, 0.015, img.shape)
        img = np.repeat(np.clip(img, 0, 1)[..., None] ** gamma, 3, axis=2)
    else:
        img = _downsample(rgb) * cam["gain"] * cam["bright"] * rng.uniform(0.85, 1.15)
        img = (img - 0.5) * cam["contrast"] * rng.uniform(0.9, 1.1) + 0.5 + rng.normal(0, 0.015, img.shape)
        img = np.clip(img, 0, 1) ** gamma
    return (img * 255 + 0.5).astype(np.uint8)


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar when tqdm is installed (imported lazily), else a silent stand-in."""
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="img", disable=not enabled)
    except ImportError:
        return type("NoBar", (), {"update": lambda self, n=1: None, "close": lambda self: None})()


def _atomic_write(out: str, overwrite: bool, write) -> str:
    """Runs write(tmp_dir) into `out.tmp-<pid>`, then renames it to `out`."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite / overwrite=True)")
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        write(tmp)
        if os.path.exists(out):
            shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save(img: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, **({"quality": 90} if path.endswith(".jpg") else {}))


# (render_image's positional arguments, the file's path); a job's output depends on nothing else.
RenderJob = Tuple[tuple, dict, str]
PARALLEL_FROM = 300  # fewer images than this render in this process (worker start-up costs ~1 s)


def _render_and_save(jobs: Sequence[RenderJob]) -> int:
    for args, kwargs, path in jobs:
        _save(render_image(*args, **kwargs), path)
    return len(jobs)


def _render_all(jobs: List[RenderJob], bar, workers: Optional[int] = None) -> None:
    """Renders and writes every job on `workers` processes (None: one per core from PARALLEL_FROM jobs on).

    Each image is seeded by its own keys (see `render_image`), so the files are the same
    byte for byte whatever the number of workers or the order they finish in."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) >= PARALLEL_FROM else 1
    if workers == 1:
        for job in jobs:
            bar.update(_render_and_save([job]))
        return
    import concurrent.futures
    import multiprocessing

    chunks = [jobs[start:start + 16] for start in range(0, len(jobs), 16)]
    # spawn: the parent may hold TensorFlow's threads, which a fork would copy half-locked.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in pool.map(_render_and_save, chunks):
            bar.update(done)


def sysu_split(identities: int, seed: int) -> Dict[str, List[int]]:
    """About 60/15/25 % train/val/test ids (1-based), at least 1 each and 2 train/test when N >= 6."""
    if identities < 3:
        raise ValueError(f"SYSU layout needs at least 3 identities (train, val, test), got {identities}")
    least = 2 if identities >= 6 else 1
    n_test = max(least, round(0.25 * identities))
    n_val = max(1, min(round(0.15 * identities), identities - n_test - least))
    ids = _rng(seed, _SYSU, _SPLIT).permutation(np.arange(1, identities + 1)).tolist()
    cut = n_test + n_val
    return {"test": sorted(ids[:n_test]), "val": sorted(ids[n_test:cut]), "train": sorted(ids[cut:])}


def sysu_cameras(seed: int, pid: int, test: bool) -> List[int]:
    """The cameras an id appears in: most, not always all, with the protocol's minimum guaranteed."""
    rng = _rng(seed, _SYSU, _COVER, pid)
    cams = {c for c in range(1, 7) if rng.random() < 0.75}
    if not cams & set(SYSU_INFRARED_CAMERAS):
        cams.add(int(rng.choice(SYSU_INFRARED_CAMERAS)))
    need = (1, 2) if test else SYSU_VISIBLE_CAMERAS  # indoor search needs cam1/cam2 for test ids
    if not cams & set(need):
        cams.add(int(rng.choice(need)))
    return sorted(cams)


def _check(seed: int, image_size: Size, images_per_camera: int) -> None:
    if seed < 0 or images_per_camera < 1 or image_size[0] < 16 or image_size[1] < 8:
        raise ValueError(f"need seed >= 0, images_per_camera >= 1 and image size >= 16x8; got seed {seed}, "
                         f"images_per_camera {images_per_camera}, image size {image_size}")


def generate_sysu(out: str, identities: int = 24, seed: int = 0, image_size: Size = (64, 32),
                  images_per_camera: int = 4, overwrite: bool = False, progress: bool = True,
                  workers: Optional[int] = None) -> str:
    """Writes a SYSU-MM01-layout dataset; returns its absolute path.

    Args:
        out: target folder (must be absent or empty unless overwrite).
        identities: number of ids (>= 3), numbered from 1.
        seed: non-negative seed; the same seed gives byte-identical files.
        image_size: (height, width).
        images_per_camera: images per id per camera it appears in.
        workers: rendering processes for large sets (default one per core; the files do not
            depend on it).
    """
    _check(seed, image_size, images_per_camera)
    split = sysu_split(identities, seed)
    test = set(split["test"])
    plan = [(pid, cam, i) for pid in range(1, identities + 1) for cam in sysu_cameras(seed, pid, pid in test)
            for i in range(1, images_per_camera + 1)]

    def write(root: str) -> None:
        for folder in [f"cam{cam}" for cam in range(1, 7)] + ["exp"]:
            os.makedirs(os.path.join(root, folder))  # every camera folder, even one an id misses
        for which, ids in split.items():
            with open(os.path.join(root, f"exp/{which}_id.txt"), "w") as f:
                f.write(",".join(str(i) for i in ids) + "\n")
        bar = _progress(len(plan), "sysu", progress)
        _render_all([((seed, _SYSU, pid, cam, (cam, i), cam in SYSU_INFRARED_CAMERAS, image_size), {},
                      os.path.join(root, f"cam{cam}/{pid:04d}/{i:04d}.jpg")) for pid, cam, i in plan], bar, workers)
        bar.close()

    return _atomic_write(out, overwrite, write)


def generate_regdb(out: str, identities: int = 20, seed: int = 0, image_size: Size = (64, 32),
                   images_per_camera: int = 10, overwrite: bool = False, progress: bool = True,
                   workers: Optional[int] = None) -> str:
    """Writes a RegDB-layout dataset with idx files for trials 1..10; returns its absolute path.

    Args: as `generate_sysu`; identities >= 2, images_per_camera per id per modality.
    Each visible/thermal pair shares its pose, as RegDB's dual camera captures both at once.
    """
    _check(seed, image_size, images_per_camera)
    if identities < 2:
        raise ValueError(f"RegDB layout needs at least 2 identities (train and test), got {identities}")
    people = {pid: _person(seed, _REGDB, pid) for pid in range(1, identities + 1)}

    def write(root: str) -> None:
        bar = _progress(2 * identities * images_per_camera, "regdb", progress)
        files: Dict[Tuple[int, bool], List[str]] = {}
        jobs: List[RenderJob] = []
        for pid, person in people.items():
            for thermal, cam, folder, tag in ((False, 1, "Visible", "v"), (True, 2, "Thermal", "t")):
                names = files.setdefault((pid, thermal), [])
                for i in range(1, images_per_camera + 1):  # the thermal twin shares the visible number
                    number = (pid - 1) * images_per_camera + i
                    view = ("back", "front")[i % 2]
                    name = f"{folder}/{pid}/{person.gender}_{view}_{tag}_{number:05d}_{pid}.bmp"
                    jobs.append(((seed, _REGDB, pid, cam, (0, i), thermal, image_size), {"geometry_camera": 1},
                                 os.path.join(root, name)))
                    names.append(name)
        _render_all(jobs, bar, workers)
        bar.close()
        os.makedirs(os.path.join(root, "idx"))
        for trial in range(1, 11):
            ids = _rng(seed, _REGDB, _SPLIT, trial).permutation(np.arange(1, identities + 1)).tolist()
            for split, chosen in (("train", ids[:identities // 2]), ("test", ids[identities // 2:])):
                for thermal, modality in ((False, "visible"), (True, "thermal")):
                    with open(os.path.join(root, f"idx/{split}_{modality}_{trial}.txt"), "w") as f:
                        for label, pid in enumerate(sorted(chosen)):  # labels 0.. over sorted ids
                            f.writelines(f"{name} {label}\n" for name in files[(pid, thermal)])

    return _atomic_write(out, overwrite, write)


def write_montage(root: str, layout: str, path: str, rows: int = 6, zoom: int = 2) -> str:
    """A PNG grid: one row per id, one image per camera (SYSU) or visible/thermal pairs (RegDB)."""
    cells: List[List[str]] = []
    for pid in range(1, rows + 1):
        if layout == "sysu":
            cells.append([os.path.join(root, f"cam{c}/{pid:04d}/0001.jpg") for c in range(1, 7)])
        elif os.path.isdir(os.path.join(root, f"Visible/{pid}")):
            vis, thr = (sorted(glob.glob(f"{root}/{m}/{pid}/*.bmp"))[:3] for m in ("Visible", "Thermal"))
            cells.append([name for pair in zip(vis, thr) for name in pair])
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
    parser = argparse.ArgumentParser(prog="python -m kdem_tf.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=("sysu", "regdb", "llcm"), required=True)
    parser.add_argument("--out", required=True, help="output folder (absent or empty)")
    parser.add_argument("--identities", type=int, help="number of ids (default: sysu 24, regdb 20, llcm 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=_size, default=(64, 32), help="HxW (default 64x32)")
    parser.add_argument("--images-per-camera", type=int, help="default: sysu 4, regdb 10, llcm 2")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--montage", help="also write a PNG montage of the first ids here (sysu, regdb)")
    args = parser.parse_args(argv)
    generate = {"sysu": generate_sysu, "regdb": generate_regdb}.get(args.layout)
    if generate is None:  # llcm: kdem_tf.data.synthetic_llcm
        from kdem_tf.data.synthetic_llcm import generate_llcm as generate
    kwargs = {k: v for k, v in vars(args).items() if k in ("identities", "images_per_camera") and v is not None}
    try:
        root = generate(args.out, seed=args.seed, image_size=args.image_size, overwrite=args.overwrite, **kwargs)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.layout} layout to {root}")
    if args.montage and args.layout != "llcm":
        print(f"montage: {write_montage(root, args.layout, args.montage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

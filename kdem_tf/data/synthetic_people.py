"""The synthetic people renderer behind every dataset's stand-in (`Dataset.generate_synthetic`).

Not a benchmark: it lets readers, input pipeline and training run without the real data.
Each identity gets a seeded body shape, garment patterns and colours and a carried object;
visible images show colours, infrared ones a non-linear "heat" map of the same scene (skin
hot, fabric by emissivity, background cool), blurred and noisy. Every image draws from a
Generator seeded by (seed, layout, id, camera, index), so output does not depend on order.

Each dataset module (kdem_tf/datasets/) writes its own layout with these functions; the
command line is `python -m kdem_tf.data.synthetic --layout sysu --out data/sysu_synth`.
"""
from __future__ import annotations

import colorsys
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from kdem_tf.artifacts import publish_folder

PATTERNS = ("solid", "stripes", "checks", "blocks")
SUPERSAMPLE = 2  # rendered at 2x and averaged down: anti-aliased edges
# Keys of the random streams; each layout (a dataset module's SYNTHETIC_LAYOUT) draws its own people.
_PERSON, _CAMERA, _POSE, _LIGHT = range(1, 5)
SPLIT_STREAM, COVER_STREAM = 5, 6  # the streams a layout draws its id split and camera coverage from
Size = Tuple[int, int]  # (height, width)


def random_stream(seed: int, *keys: int) -> np.random.Generator:
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


def person(seed: int, layout: int, pid: int) -> Person:
    rng = random_stream(seed, layout, _PERSON, pid)
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.45, 1.1)
    return Person(height=rng.uniform(0.8, 0.94), width=rng.uniform(0.3, 0.5),
                  head=rng.uniform(0.06, 0.085), leg_gap=rng.uniform(0.05, 0.3),
                  waist=rng.uniform(0.45, 0.56), upper=_garment(rng), lower=_garment(rng),
                  skin=np.clip(skin, 0, 1), hair=rng.uniform(0.02, 0.45) * np.array([1, 0.85, 0.7]),
                  carry=("none", "bag", "backpack")[rng.integers(3)], side=int(rng.choice([-1, 1])),
                  carry_colour=rng.uniform(0.05, 0.9, 3), gender=("female", "male")[rng.integers(2)])


def _camera(seed: int, layout: int, camera: int, infrared: bool) -> Dict[str, np.ndarray]:
    """Fixed per camera: background, lighting, viewpoint and framing habits."""
    rng = random_stream(seed, layout, _CAMERA, camera)
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
    rgb, heat = _render(person(seed, layout, pid), cam, random_stream(seed, layout, _POSE, pid, *pose_key), size)
    rng = random_stream(seed, layout, _LIGHT, pid, camera, pose_key[1])
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


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar when tqdm is installed (imported lazily), else a silent stand-in."""
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="img", disable=not enabled)
    except ImportError:
        return type("NoBar", (), {"update": lambda self, n=1: None, "close": lambda self: None})()


def write_atomically(out: str, overwrite: bool, write) -> str:
    """Runs write(folder) in a temporary sibling of `out`, then publishes it at `out` in one rename
    (`kdem_tf.artifacts.publish_folder`); an existing non-empty `out` is replaced only with `overwrite`."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite / overwrite=True)")

    def write_folder(folder: str) -> None:
        os.makedirs(folder)
        write(folder)
    return publish_folder(out, write_folder, replace=True)


def save_image(img: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, **({"quality": 90} if path.endswith(".jpg") else {}))


# (render_image's positional arguments, the file's path); a job's output depends on nothing else.
RenderJob = Tuple[tuple, dict, str]
PARALLEL_FROM = 300  # fewer images than this render in this process (worker start-up costs ~1 s)


def _render_and_save(jobs: Sequence[RenderJob]) -> int:
    for args, kwargs, path in jobs:
        save_image(render_image(*args, **kwargs), path)
    return len(jobs)


def render_all(jobs: List[RenderJob], bar, workers: Optional[int] = None) -> None:
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


def check_settings(seed: int, image_size: Size, images_per_camera: int) -> None:
    """Refuses settings no layout can render."""
    if seed < 0 or images_per_camera < 1 or image_size[0] < 16 or image_size[1] < 8:
        raise ValueError(f"need seed >= 0, images_per_camera >= 1 and image size >= 16x8; got seed {seed}, "
                         f"images_per_camera {images_per_camera}, image size {image_size}")

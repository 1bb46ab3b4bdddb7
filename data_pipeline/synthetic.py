"""Procedural person re-identification data, written in the Market-1501 or DukeMTMC layout.

The generated folders are read by the real dataset builders, so the loading code under test is
the code users run, and training runs end to end on a machine with no dataset.

Retrieval here is meant to be a real task, not a colour lookup:
- identities draw clothing from a small shared palette (many people wear similar colours) and
  differ in pattern (stripes, checks, two-tone, chest logo), bag (backpack, shoulder bag),
  hair colour and length, shoes, skin tone and body shape;
- each camera has its own background, colour cast, brightness, blur, sensor noise and a
  preferred viewpoint;
- the viewpoint (front, back, side) changes what is visible: a logo only from the front, a
  backpack mostly from the back, a narrower body and one arm from the side;
- every image jitters position, scale and stride, and a quarter are partly occluded by an
  umbrella, a railing, a pole or another person.

Everything is a pure function of the seed: each identity and image has its own random stream.

    python -m data_pipeline.synthetic --out data/synthetic_market --train-ids 100 --test-ids 100
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 128, 64  # Market-1501's crop size
LAYOUTS = ("market1501", "dukemtmc")
SPLIT_DIRS = ("bounding_box_train", "bounding_box_test", "query")

# Shared clothing palette (RGB): a short list so colour alone cannot tell people apart.
PALETTE = np.array([
    [30, 30, 35], [235, 235, 230], [120, 120, 125], [40, 50, 110], [150, 30, 35],
    [40, 95, 50], [200, 170, 60], [110, 70, 40], [200, 110, 140], [70, 130, 180],
    [210, 120, 40], [90, 60, 120],
], dtype=np.float32)
SKIN = np.array([[240, 200, 170], [210, 160, 120], [160, 110, 80], [95, 65, 45]], np.float32)
HAIR = np.array([[20, 15, 10], [70, 45, 25], [160, 120, 60], [120, 120, 120]], np.float32)
VIEWS = ("front", "back", "side")
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "twotone", "logo")
OCCLUDERS = ("umbrella", "railing", "pole", "person")


@dataclasses.dataclass(frozen=True)
class Identity:
    upper: np.ndarray
    upper2: np.ndarray  # second colour of the pattern
    pattern: str
    stripe_period: int
    lower: np.ndarray
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    bag: str  # none | backpack | shoulder
    bag_colour: np.ndarray
    width: float  # body width factor
    height: float  # body height factor


@dataclasses.dataclass(frozen=True)
class Camera:
    background: np.ndarray  # (H + 16, W + 16, 3): shifted per image
    gain: np.ndarray  # per-channel colour cast
    brightness: float
    blur: float  # Gaussian sigma in pixels
    noise: float  # sensor noise sigma, 0-255 scale
    view_probs: np.ndarray  # P(front, back, side)


def _pick(rng, table, jitter):
    return np.clip(table[rng.integers(len(table))] + rng.normal(0, jitter, 3), 0, 255)


def make_identity(rng: np.random.Generator) -> Identity:
    upper_idx, upper2_idx = rng.choice(len(PALETTE), 2, replace=False)
    return Identity(
        upper=np.clip(PALETTE[upper_idx] + rng.normal(0, 12, 3), 0, 255),
        upper2=np.clip(PALETTE[upper2_idx] + rng.normal(0, 12, 3), 0, 255),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        stripe_period=int(rng.integers(4, 9)),
        lower=_pick(rng, PALETTE[:8], 12),
        shoes=_pick(rng, PALETTE[:3], 10),
        skin=_pick(rng, SKIN, 8),
        hair=_pick(rng, HAIR, 8),
        long_hair=bool(rng.random() < 0.35),
        bag=("none", "backpack", "shoulder")[rng.choice(3, p=[0.5, 0.3, 0.2])],
        bag_colour=_pick(rng, PALETTE, 15),
        width=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.05)),
    )


def make_camera(rng: np.random.Generator) -> Camera:
    h, w = HEIGHT + 16, WIDTH + 16
    yy = np.linspace(0, 1, h)[:, None, None]
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(40, 160, 3)
    background = np.broadcast_to(top * (1 - yy) + bottom * yy, (h, w, 3)).copy()
    floor = int(h * rng.uniform(0.65, 0.85))
    background[floor:] = rng.uniform(50, 150, 3)
    for _ in range(int(rng.integers(3, 8))):  # walls, windows, signs
        y0, x0 = rng.integers(0, floor), rng.integers(0, w)
        height, width = rng.integers(5, 40), rng.integers(5, 30)
        background[y0:y0 + height, x0:x0 + width] = rng.uniform(30, 230, 3)
    return Camera(
        background=background.astype(np.float32),
        gain=rng.uniform(0.8, 1.2, 3).astype(np.float32),
        brightness=float(rng.uniform(0.7, 1.25)),
        blur=float(rng.uniform(0.0, 1.3)),
        noise=float(rng.uniform(1.0, 7.0)),
        view_probs=rng.dirichlet([2.0, 2.0, 2.0]),
    )


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def _box(y0, y1, x0, x1):
    return (_YY >= y0) & (_YY < y1) & (_XX >= x0) & (_XX < x1)


def _ellipse(cy, cx, ry, rx):
    return ((_YY - cy) / ry) ** 2 + ((_XX - cx) / rx) ** 2 <= 1.0


def draw_person(img: np.ndarray, who: Identity, view: str, rng: np.random.Generator,
                cx: float, scale: float) -> None:
    """Paint one person into ``img`` (H, W, 3 float), centred at column ``cx``."""
    s = scale * who.height
    top = HEIGHT * (1 - 0.94 * s) / 2 + rng.uniform(-3, 3)
    unit = HEIGHT * 0.94 * s  # full body height in pixels
    half_w = WIDTH * 0.2 * who.width * scale * (0.62 if view == "side" else 1.0)
    head_cy, head_r = top + 0.07 * unit, 0.065 * unit
    torso_y0, torso_y1 = top + 0.14 * unit, top + 0.52 * unit
    legs_y1 = top + 0.95 * unit
    stride = rng.uniform(0, 0.5) * half_w

    # legs and shoes
    for side in (-1, 1):
        lx = cx + side * (0.45 * half_w + (stride if view == "side" else 0) * side * 0.5)
        img[_box(torso_y1, legs_y1, lx - 0.4 * half_w, lx + 0.4 * half_w)] = who.lower
        img[_box(legs_y1 - 0.04 * unit, legs_y1 + 0.01 * unit, lx - 0.5 * half_w,
                 lx + 0.5 * half_w)] = who.shoes
    # back-facing backpack is drawn over the torso below; side view shows its edge behind
    if who.bag == "backpack" and view == "side":
        img[_box(torso_y0 + 0.03 * unit, torso_y1 - 0.05 * unit, cx + 0.8 * half_w,
                 cx + 1.3 * half_w)] = who.bag_colour
    # torso with pattern
    torso = _box(torso_y0, torso_y1, cx - half_w, cx + half_w)
    colour = np.broadcast_to(who.upper, img.shape).copy()
    period = who.stripe_period * scale
    if who.pattern == "hstripes":
        colour[(_YY // period) % 2 == 1] = who.upper2
    elif who.pattern == "vstripes":
        colour[(_XX // period) % 2 == 1] = who.upper2
    elif who.pattern == "checks":
        colour[((_YY // period) + (_XX // period)) % 2 == 1] = who.upper2
    elif who.pattern == "twotone":
        colour[_YY < (torso_y0 + torso_y1) / 2] = who.upper2
    elif who.pattern == "logo" and view == "front":
        colour[_box(torso_y0 + 0.08 * unit, torso_y0 + 0.2 * unit, cx - 0.45 * half_w,
                    cx + 0.45 * half_w)] = who.upper2
    img[torso] = colour[torso]
    # arms: both from front/back, one from the side
    arm_sides = (1,) if view == "side" else (-1, 1)
    for side in arm_sides:
        ax = (cx + side * (half_w + 0.12 * half_w) if view != "side"
              else cx + rng.uniform(-0.3, 0.3) * half_w)
        img[_box(torso_y0 + 0.02 * unit, torso_y1 + 0.02 * unit, ax - 0.22 * half_w,
                 ax + 0.22 * half_w)] = who.upper
        img[_box(torso_y1 + 0.02 * unit, torso_y1 + 0.06 * unit, ax - 0.2 * half_w,
                 ax + 0.2 * half_w)] = who.skin
    if who.bag == "backpack" and view == "back":
        img[_box(torso_y0 + 0.03 * unit, torso_y1 - 0.04 * unit, cx - 0.75 * half_w,
                 cx + 0.75 * half_w)] = who.bag_colour
    if who.bag == "shoulder":
        bx = cx + (1.0 if view != "back" else -1.0) * 1.15 * half_w
        img[_box(torso_y1 - 0.12 * unit, torso_y1 + 0.03 * unit, bx - 0.35 * half_w,
                 bx + 0.35 * half_w)] = who.bag_colour
    # head: face from the front, hair only from the back
    head = _ellipse(head_cy, cx, head_r, head_r * 0.8)
    img[head] = who.hair if view == "back" else who.skin
    crown = _ellipse(head_cy - 0.5 * head_r, cx, 0.6 * head_r, 0.85 * head_r)
    img[crown & ~(_YY > head_cy)] = who.hair
    if who.long_hair and view != "front":
        img[_box(head_cy, head_cy + 0.14 * unit, cx - 0.6 * head_r, cx + 0.6 * head_r)] = who.hair


def draw_occluder(img: np.ndarray, kind: str, rng: np.random.Generator,
                  make_other: callable) -> None:
    if kind == "umbrella":
        cx, cy = rng.uniform(0.3, 0.7) * WIDTH, rng.uniform(0.02, 0.12) * HEIGHT
        dome = _ellipse(cy, cx, 0.14 * HEIGHT, 0.55 * WIDTH) & (_YY < cy + 0.06 * HEIGHT)
        img[dome] = _pick(rng, PALETTE, 20)
    elif kind == "railing":
        y0 = rng.uniform(0.5, 0.75) * HEIGHT
        colour = rng.uniform(60, 180, 3)
        for k in range(int(rng.integers(2, 4))):
            img[_box(y0 + 12 * k, y0 + 12 * k + 3, 0, WIDTH)] = colour
        for x in range(int(rng.integers(0, 10)), WIDTH, 14):
            img[_box(y0, HEIGHT, x, x + 2)] = colour
    elif kind == "pole":
        x0 = rng.uniform(0, WIDTH - 8)
        img[_box(0, HEIGHT, x0, x0 + rng.uniform(4, 9))] = rng.uniform(40, 200, 3)
    else:  # another person passing at the side, in front
        cx = rng.choice([-1, 1]) * rng.uniform(0.45, 0.65) * WIDTH + WIDTH / 2
        draw_person(img, make_other(), VIEWS[rng.integers(3)], rng, cx, rng.uniform(0.9, 1.05))


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    radius = int(np.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        img = sum(w * np.take(padded, np.arange(i, i + img.shape[axis]), axis=axis)
                  for i, w in enumerate(k))
    return img


def render(who: Identity | None, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (H, W, 3) crop: ``who=None`` gives a distractor (background, maybe a part)."""
    oy, ox = rng.integers(0, 17, 2)
    img = cam.background[oy:oy + HEIGHT, ox:ox + WIDTH].copy()
    if who is not None:
        view = VIEWS[rng.choice(3, p=cam.view_probs)]
        draw_person(img, who, view, rng, WIDTH / 2 + rng.uniform(-4, 4), rng.uniform(0.85, 1.05))
        if rng.random() < 0.25:
            draw_occluder(img, OCCLUDERS[rng.integers(4)], rng, lambda: make_identity(rng))
    elif rng.random() < 0.5:  # a badly framed detection: someone cut off at the border
        draw_person(img, make_identity(rng), VIEWS[rng.integers(3)], rng,
                    rng.choice([-0.3, 1.3]) * WIDTH, 1.0)
    img = _gaussian_blur(img * cam.gain * cam.brightness, cam.blur)
    img = img + rng.normal(0, cam.noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def file_name(layout: str, pid: int, cam: int, index: int) -> str:
    """A name in the dataset's own convention; ``cam`` is 1-based as on disk."""
    if layout == "market1501":  # pid_c{cam}s{seq}_{frame}_{box}.jpg, pid -1 = junk
        pid_str = "-1" if pid < 0 else f"{pid:04d}"
        return f"{pid_str}_c{cam}s1_{index:06d}_00.jpg"
    return f"{pid:04d}_c{cam}_f{index:07d}.jpg"  # DukeMTMC-reID


def generate(out: str | Path, *, layout: str = "market1501", train_ids: int = 100,
             test_ids: int = 100, cameras: int = 6, images_per_camera: tuple[int, int] = (2, 4),
             distractors: int = 50, junk: int = 20, seed: int = 0) -> dict[str, int]:
    """Write a ReID dataset under ``out`` in ``layout``; returns images written per split.

    Each identity appears in 2..``cameras`` cameras with ``images_per_camera`` images in each.
    Test identities give one image per camera to ``query`` and the rest to
    ``bounding_box_test``; the Market layout also gets ``distractors`` pid-0000 images and
    ``junk`` pid -1 images in the gallery. Train and test identities are disjoint; pids are
    numbered from 1 and shuffled so they carry no order information.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if cameras < 2:
        raise ValueError("cameras must be >= 2: every query needs a match in another camera")
    out = Path(out)
    for d in SPLIT_DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    cams = [make_camera(np.random.default_rng(s)) for s in root.spawn(cameras)]
    pid_rng = np.random.default_rng(root.spawn(1)[0])
    pids = pid_rng.permutation(np.arange(1, train_ids + test_ids + 1))
    counts = dict.fromkeys(SPLIT_DIRS, 0)
    frame = 0

    def write(split, img, pid, cam):
        nonlocal frame
        frame += 1
        (out / split / file_name(layout, pid, cam + 1, frame)).write_bytes(encode_jpeg(img))
        counts[split] += 1

    for n, pid in enumerate(pids):
        rng = np.random.default_rng([seed, int(pid)])
        who = make_identity(rng)
        seen = rng.choice(cameras, int(rng.integers(2, cameras + 1)), replace=False)
        is_test = n >= train_ids
        for cam in sorted(seen):
            for k in range(int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))):
                split = (("query" if k == 0 else "bounding_box_test") if is_test
                         else "bounding_box_train")
                write(split, render(who, cams[cam], rng), int(pid), int(cam))
    if layout == "market1501":
        rng = np.random.default_rng([seed, 0])
        for pid, count in ((0, distractors), (-1, junk)):
            for _ in range(count):
                cam = int(rng.integers(cameras))
                write("bounding_box_test", render(None, cams[cam], rng), pid, cam)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a procedural ReID dataset.")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--layout", choices=LAYOUTS, default="market1501")
    parser.add_argument("--train-ids", type=int, default=100)
    parser.add_argument("--test-ids", type=int, default=100)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--distractors", type=int, default=50)
    parser.add_argument("--junk", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = generate(args.out, layout=args.layout, train_ids=args.train_ids,
                      test_ids=args.test_ids, cameras=args.cameras,
                      distractors=args.distractors, junk=args.junk, seed=args.seed)
    total = sum(counts.values())
    print(f"wrote {total} images to {args.out} in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()

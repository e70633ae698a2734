"""The ``waste`` demo domain: what makes waste hard for SAM (TACO, ZeroWaste-f, TrashCan).

3-15 objects of five material categories on a per-image scene (a striped, grimy conveyor belt,
gravel/grass/soil ground, or a hazy underwater seabed with caustics and particles). Objects are
deformable and crumpled (multi-scale outline noise), transparent or semi-transparent (the
background shows through; only a rim and highlights mark the edge), camouflaged against the
background, cluttered and occluded, cast shadows (not part of any mask), and carry labels, print,
tape, folds and specular stripes whose colour edges lie inside the object. Parts of the image may
be blurred. Each category has a shape (:func:`_waste_shape`) and a painter (``_paint_*``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .canvas import (
    DemoSample,
    Frame,
    Painter,
    Scene,
    Shape,
    blur_rgb,
    crumple,
    erode,
    finish,
    fractal_noise,
    hsv,
    linear_ramp,
    object_side,
    scale_to,
    signed_area,
    smooth_noise,
)

# ids 1-4 are ZeroWaste-f's; 5 stands for TACO's paper classes.
CATEGORIES = (
    {"id": 1, "name": "rigid_plastic", "supercategory": "plastic"},
    {"id": 2, "name": "cardboard", "supercategory": "paper"},
    {"id": 3, "name": "metal", "supercategory": "metal"},
    {"id": 4, "name": "soft_plastic", "supercategory": "plastic"},
    {"id": 5, "name": "paper", "supercategory": "paper"},
)
#: The ``scene`` recorded on each COCO image entry.
SCENES = ("conveyor", "ground", "underwater")


# --------------------------------------------------------------------------------------------
# Waste domain: backgrounds
# --------------------------------------------------------------------------------------------


def _conveyor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey/brown rubber belt: ridges across the belt, panel seams, grime stains, speckle."""
    base = hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.6))
    canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    along = x if rng.random() < 0.5 else y  # belt direction
    across = y if along is x else x
    period = rng.uniform(5, 14)
    ridges = np.sin(2 * np.pi * across / period) * rng.uniform(6, 14)
    seam_gap = rng.uniform(50, 110)
    seams = (np.mod(along + rng.uniform(0, seam_gap), seam_gap) < rng.uniform(1.5, 3.0)) * -rng.uniform(20, 40)
    grime = fractal_noise(rng, h, w, rng.uniform(3, 6)) * rng.uniform(10, 20)
    stains = np.clip(fractal_noise(rng, h, w, rng.uniform(4, 8)) - 1.0, 0, None) * -rng.uniform(15, 30)
    speckle = smooth_noise(rng, h, w, rng.uniform(60, 120)) * rng.uniform(4, 10)
    canvas += (ridges + seams + grime + stains + speckle)[..., None]
    canvas *= 1 + linear_ramp(rng, h, w)[..., None] * rng.uniform(0.1, 0.35)  # uneven lighting
    return canvas


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gravel, grass or soil: busy multi-scale texture in earthy colours."""
    kind = int(rng.integers(3))
    if kind == 0:  # gravel: many small stones of varied greys/browns
        base = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.65))
        img = Image.new("RGB", (w, h), tuple(int(c) for c in base))
        draw = ImageDraw.Draw(img)
        n = int(h * w / rng.uniform(25, 60))
        xy = rng.uniform([0, 0], [w, h], (n, 2))
        rad = rng.uniform(1.5, 4.5, n)
        tone = rng.normal(0, 35, n)
        for (cx, cy), r, t in zip(xy, rad, tone):  # PIL ellipses: a few thousand C calls, ~10 ms
            c = tuple(int(np.clip(b + t, 0, 255)) for b in base)
            draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=c)
        canvas = np.asarray(img, np.float32).copy()
        canvas += fractal_noise(rng, h, w, 4)[..., None] * 10
    elif kind == 1:  # grass: green streaks
        base = hsv(rng.uniform(0.2, 0.33), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.6))
        canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        blades = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        streak = np.asarray(blades.filter(ImageFilter.GaussianBlur((0.5, rng.uniform(2.5, 4.0)))), np.float32)
        streak = (streak - streak.mean()) / (streak.std() + 1e-6)
        canvas *= 1 + 0.22 * streak[..., None]
        canvas += fractal_noise(rng, h, w, 5)[..., None] * np.array([12, 16, 6], np.float32)
    else:  # soil / sand
        base = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.25, 0.55), rng.uniform(0.35, 0.75))
        canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        canvas *= 1 + 0.15 * fractal_noise(rng, h, w, 6, octaves=5, persistence=0.7)[..., None]
        canvas += smooth_noise(rng, h, w, 100)[..., None] * 8
    canvas *= 1 + linear_ramp(rng, h, w)[..., None] * rng.uniform(0.0, 0.3)
    return canvas


def _seabed(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sandy/rocky seabed fading into blue-green water towards the top."""
    sand = hsv(rng.uniform(0.12, 0.3), rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.6))
    canvas = np.broadcast_to(sand, (h, w, 3)).astype(np.float32).copy()
    canvas *= 1 + 0.2 * fractal_noise(rng, h, w, 5, octaves=5, persistence=0.65)[..., None]
    rocks = np.clip(fractal_noise(rng, h, w, rng.uniform(3, 6)) - 0.8, 0, None)
    canvas *= 1 - 0.35 * np.clip(rocks, 0, 1)[..., None]
    return canvas


def _underwater_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Water over everything: red loss, depth haze towards the top, caustics, blur, particles."""
    h, w = canvas.shape[:2]
    water = hsv(rng.uniform(0.42, 0.55), rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.6))
    canvas = canvas * np.array([rng.uniform(0.55, 0.8), rng.uniform(0.85, 1.0), 1.0], np.float32)
    y = np.linspace(1, 0, h, dtype=np.float32)[:, None, None]
    haze = np.clip(rng.uniform(0.1, 0.3) + rng.uniform(0.0, 0.2) * y, 0, 0.5)
    canvas = canvas * (1 - haze) + water * haze
    n = fractal_noise(rng, h, w, rng.uniform(5, 9), octaves=2, persistence=0.4)
    caustic = np.clip(1 - np.abs(n) / 0.25, 0, 1) ** 2
    canvas = canvas + caustic[..., None] * rng.uniform(15, 40)
    canvas = blur_rgb(canvas, rng.uniform(0.5, 1.0))
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(30, 150))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.4, 1.6)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(120, 256)))
    specks = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), np.float32)[..., None] / 255
    return canvas * (1 - specks) + (water * 0.5 + 127) * specks


def _partial_blur(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Blur part of the image (defocus or motion along one axis), blended by a smooth region."""
    h, w = canvas.shape[:2]
    if rng.random() < 0.5:
        blurred = blur_rgb(canvas, rng.uniform(1.2, 2.5))
    else:  # motion blur along x or y
        s = rng.uniform(2.0, 4.0)
        blurred = blur_rgb(canvas, s, 0.3) if rng.random() < 0.5 else blur_rgb(canvas, 0.3, s)
    region = np.clip(linear_ramp(rng, h, w) * rng.uniform(2, 5) + rng.uniform(-0.5, 0.5) + 0.5, 0, 1)
    return canvas * (1 - region[..., None]) + blurred * region[..., None]


# --------------------------------------------------------------------------------------------
# Waste domain: objects (shape + painter per category)
# --------------------------------------------------------------------------------------------

_RIGID, _CARDBOARD, _METAL, _SOFT, _PAPER = 1, 2, 3, 4, 5
# Frequencies of the categories (ZeroWaste-f is dominated by cardboard and soft plastic).
_WASTE_P = np.array([0.24, 0.2, 0.14, 0.26, 0.16])
# Size factor per category (cans are small, cardboard big), applied to the shared size draw.
_WASTE_SIZE = {_RIGID: 1.0, _CARDBOARD: 1.35, _METAL: 0.8, _SOFT: 1.1, _PAPER: 0.95}


def _profile_shape(u: np.ndarray, half_width: np.ndarray) -> Shape:
    """Closed polygon of a shape symmetric about the ``u`` axis from its half-width profile."""
    right = np.stack([u, half_width], 1)
    left = np.stack([u[::-1], -half_width[::-1]], 1)
    p = np.vstack([right, left])
    return Shape(p - [[(u[0] + u[-1]) / 2, 0.0]], float(u[-1] - u[0]), float(2 * half_width.max()))


def _bottle_shape(rng: np.random.Generator) -> Shape:
    """Bottle side view (body, shoulder, neck, cap) or a cup/tub; length 1."""
    u = np.linspace(0, 1, 48)
    if rng.random() < 0.7:
        body_w = rng.uniform(0.22, 0.36) / 2
        neck_w = body_w * rng.uniform(0.3, 0.45)
        s0, s1 = rng.uniform(0.5, 0.65), rng.uniform(0.72, 0.82)
        t = np.clip((u - s0) / (s1 - s0), 0, 1)
        hw = body_w + (neck_w - body_w) * (0.5 - 0.5 * np.cos(np.pi * t))
        hw = np.where(u > 0.92, neck_w * 1.15, hw)  # cap lip
    else:  # cup or tub: tapered, wide
        top, bottom = rng.uniform(0.45, 0.7) / 2, None
        bottom = top * rng.uniform(0.6, 0.85)
        hw = bottom + (top - bottom) * u
    corner = 0.06
    hw = hw * np.sqrt(np.clip(1 - ((corner - np.minimum(u, corner)) / corner) ** 2, 0.05, 1))  # round bottom
    return _profile_shape(u, hw)


def _can_shape(rng: np.random.Generator) -> Shape:
    """Drink can: side view with elliptic ends, or seen from the top (a disc); length 1."""
    if rng.random() < 0.25:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return Shape(0.5 * np.stack([np.cos(t), rng.uniform(0.85, 1.0) * np.sin(t)], 1), 1.0, 1.0, "can_top")
    half_w = rng.uniform(0.27, 0.33)
    cap = half_w * rng.uniform(0.15, 0.3)
    u = np.linspace(0, 1, 48)
    end = np.minimum(u, 1 - u)
    hw = half_w * np.sqrt(np.clip(1 - ((cap - np.minimum(end, cap)) / cap) ** 2, 0.05, 1))
    return _profile_shape(u, hw)


def _waste_shape(rng: np.random.Generator, category_id: int) -> tuple[Shape, float]:
    """Unit-size shape of a waste category and its outline-crumple amplitude (fraction of size)."""
    if category_id == _RIGID:
        return _bottle_shape(rng), (rng.uniform(0.01, 0.04) if rng.random() < 0.4 else 0.0)  # dents
    if category_id == _METAL:
        return _can_shape(rng), (rng.uniform(0.03, 0.08) if rng.random() < 0.35 else 0.0)  # crushed
    if category_id == _CARDBOARD:
        a, b = 1.0, rng.uniform(0.45, 0.95)
        p = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + rng.normal(0, 0.08, (4, 2))
        if rng.random() < 0.5:  # a cut or torn corner
            i = int(rng.integers(4))
            c, prev, nxt = p[i], p[i - 1], p[(i + 1) % 4]
            f = rng.uniform(0.2, 0.4, 2)
            p = np.insert(np.delete(p, i, 0), i, [c + f[0] * (prev - c), c + f[1] * (nxt - c)], 0)
        return Shape(p, 2 * a, 2 * b), rng.uniform(0.005, 0.025)
    if category_id == _SOFT:  # crumpled bag / film: blobby, strongly deformed
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = 1.0 + sum(rng.uniform(0.08, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
        squash = rng.uniform(0.5, 1.0)
        return Shape(np.stack([r * np.cos(t), squash * r * np.sin(t)], 1), 2.0, 2 * squash), rng.uniform(0.05, 0.1)
    # paper: a sheet (possibly crumpled) or a crumpled ball
    if rng.random() < 0.6:
        a, b = 1.0, rng.uniform(0.6, 0.9)
        p = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + rng.normal(0, 0.05, (4, 2))
        return Shape(p, 2 * a, 2 * b), rng.uniform(0.01, 0.05)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    return Shape(np.stack([np.cos(t), rng.uniform(0.7, 1.0) * np.sin(t)], 1), 2.0, 2.0), rng.uniform(0.06, 0.1)


def _camouflage(rng: np.random.Generator, colour: np.ndarray, under: np.ndarray, p: float) -> np.ndarray:
    """With probability ``p``, pull ``colour`` towards the background colour ``under`` (low
    contrast: the object differs from its surroundings by about 20-40 RGB units)."""
    if rng.random() >= p:
        return colour
    direction = rng.normal(0, 1, 3).astype(np.float32)
    return under + direction / np.linalg.norm(direction) * rng.uniform(20, 40)


def _bands(rng: np.random.Generator, coord: np.ndarray, period: tuple[float, float], duty: float) -> np.ndarray:
    """Bool stripes (text lines, print) along ``coord`` (px) with a random period and phase."""
    p = rng.uniform(*period)
    return np.mod(coord + rng.uniform(0, p), p) < duty * p


def _paint_rigid(rng, fr: Frame, crop, under):
    clear = rng.random() < 0.55
    if clear:  # PET: faint tint, background shows through
        colour = hsv(rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0))
        opacity = np.full(crop.shape, rng.uniform(0.25, 0.6), np.float32)
    else:
        palette = [(0.33, 0.7, 0.5), (0.6, 0.7, 0.6), (0.0, 0.0, 0.9), (0.08, 0.7, 0.4), (0.0, 0.7, 0.7), (0, 0, 0.15)]
        hh, ss, vv = palette[int(rng.integers(len(palette)))]
        colour = _camouflage(rng, hsv(hh + rng.normal(0, 0.03), ss, vv), under, 0.25)
        opacity = np.ones(crop.shape, np.float32)
    shade = 1.0 - 0.35 * np.clip(fr.vn, -1, 1) ** 2
    col = colour * shade[..., None]
    # a specular stripe along the body, strongest on clear plastic
    hi = np.exp(-0.5 * ((fr.vn - rng.uniform(0.25, 0.55)) / 0.09) ** 2)
    col = col + hi[..., None] * (255 - col) * 0.8
    opacity = np.maximum(opacity, hi * 0.85)
    if rng.random() < 0.65:  # label band round the body, with print
        a = rng.uniform(-0.6, -0.1)
        band = (fr.un > a) & (fr.un < a + rng.uniform(0.35, 0.7))
        label = hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
        print_ = _bands(rng, fr.u, (4, 9), 0.3) & (rng.random() < 0.6)
        label_col = np.where(print_[..., None], label * 0.4, label) * shade[..., None]
        col = np.where(band[..., None], label_col, col)
        opacity = np.where(band, 1.0, opacity)
    if rng.random() < 0.7:  # cap
        cap = fr.un > 0.84
        col = np.where(cap[..., None], hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1)), col)
        opacity = np.where(cap, 1.0, opacity)
    if clear:  # the rim is what shows a clear bottle's edge
        rim = crop & ~erode(crop, 1)
        col = np.where(rim[..., None], col * 0.75, col)
        opacity = np.where(rim, np.maximum(opacity, 0.8), opacity)
    return col, opacity


def _paint_metal(rng, fr: Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.4:
        colour = hsv(0.6, rng.uniform(0, 0.1), rng.uniform(0.55, 0.8))  # bare aluminium
    else:
        colour = hsv(rng.choice([0.0, 0.6, 0.33, 0.12, 0.95]), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.9))
    colour = _camouflage(rng, colour, under, 0.2)
    if fr.kind == "can_top":  # top view: rim ring and tab
        r = np.hypot(fr.un, fr.vn)
        shade = 0.7 + 0.5 * np.exp(-0.5 * ((r - 0.88) / 0.06) ** 2) - 0.25 * (r < 0.3)
        col = hsv(0.6, 0.05, 0.75) * shade[..., None]
    else:  # side view: sharp metallic bands and specular stripes
        f = rng.uniform(1.0, 2.0)
        shade = 0.45 + 0.55 * np.abs(np.cos(np.pi * f * fr.vn + rng.uniform(0, np.pi)))
        col = colour * shade[..., None]
        for _ in range(int(rng.integers(1, 3))):
            spec = np.exp(-0.5 * ((fr.vn - rng.uniform(-0.7, 0.7)) / rng.uniform(0.04, 0.1)) ** 2)
            col = col + spec[..., None] * (250 - col) * 0.9
        ends = np.abs(fr.un) > rng.uniform(0.8, 0.9)
        col = np.where(ends[..., None], hsv(0.6, 0.05, 0.8) * shade[..., None], col)
        if rng.random() < 0.6:  # printed logo stripe across the can
            logo = (np.abs(fr.un - rng.uniform(-0.4, 0.4)) < rng.uniform(0.08, 0.2)) & ~ends
            col = np.where(logo[..., None], hsv(rng.random(), 0.8, rng.uniform(0.5, 1)) * shade[..., None], col)
    facets = fractal_noise(rng, h, w, max(2.0, max(h, w) / 10), octaves=2)  # dents reflect unevenly
    col = col * (1 + 0.12 * facets)[..., None]
    return col, np.ones(crop.shape, np.float32)


def _paint_cardboard(rng, fr: Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.8:
        colour = hsv(rng.uniform(0.06, 0.11), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.8))
    else:  # printed white or grey board
        colour = hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.5, 0.9))
    colour = _camouflage(rng, colour, under, 0.3)
    shade = 1 + 0.1 * fractal_noise(rng, h, w, max(2.0, max(h, w) / 12), octaves=3)
    if rng.random() < 0.5:  # corrugation
        shade = shade + 0.05 * np.sin(2 * np.pi * fr.v / rng.uniform(3, 5))
    if rng.random() < 0.4:  # fold: one flap is lit differently
        a = rng.uniform(0, 2 * np.pi)
        side = (np.cos(a) * fr.un + np.sin(a) * fr.vn) > rng.uniform(-0.4, 0.4)
        shade = shade * np.where(side, rng.uniform(0.7, 0.85), 1.0)
    col = colour * shade[..., None]
    if rng.random() < 0.45:  # packing tape along the box
        tape = np.abs(fr.vn - rng.uniform(-0.3, 0.3)) < rng.uniform(0.08, 0.18)
        tape_col = hsv(rng.uniform(0.08, 0.12), rng.uniform(0.2, 0.5), rng.uniform(0.75, 0.95))
        col = np.where(tape[..., None], tape_col * shade[..., None], col)
    for _ in range(int(rng.integers(0, 3))):  # printed blocks / text
        cu, cv = rng.uniform(-0.6, 0.6, 2)
        block = (np.abs(fr.un - cu) < rng.uniform(0.08, 0.3)) & (np.abs(fr.vn - cv) < rng.uniform(0.05, 0.2))
        if rng.random() < 0.5:
            block &= _bands(rng, fr.v, (3, 6), 0.5)
        col = np.where(block[..., None], hsv(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.05, 0.5)), col)
    return col, np.ones(crop.shape, np.float32)


def _paint_soft(rng, fr: Frame, crop, under):
    h, w = crop.shape
    transparent = rng.random() < 0.5
    palette = [(0, 0, 0.92), (0, 0, 0.12), (0.6, 0.6, 0.7), (0.95, 0.4, 0.85), (0.3, 0.5, 0.6), (0.15, 0.6, 0.8)]
    hh, ss, vv = palette[int(rng.integers(len(palette)))]
    colour = _camouflage(rng, hsv(hh + rng.normal(0, 0.03), ss, vv), under, 0.2 if not transparent else 0.0)
    n = fractal_noise(rng, h, w, max(2.0, max(h, w) / 18), octaves=3, persistence=0.6)
    ridge = 1 - np.abs(n)  # crumple ridges: bright thin lines between darker creases
    shade = 0.72 + 0.4 * ridge**2
    col = colour * shade[..., None] + (ridge**6 * 45)[..., None]
    opacity = np.ones(crop.shape, np.float32)
    if transparent:  # film: see-through except at bright creases and the edge
        opacity = np.clip(rng.uniform(0.25, 0.6) + 0.4 * ridge**6, 0, 1).astype(np.float32)
        rim = crop & ~erode(crop, 1)
        opacity = np.where(rim, np.maximum(opacity, 0.75), opacity)
    if rng.random() < 0.3:  # printed logo
        logo = np.hypot(fr.un - rng.uniform(-0.4, 0.4), fr.vn - rng.uniform(-0.4, 0.4)) < rng.uniform(0.15, 0.35)
        col = np.where(logo[..., None], hsv(rng.random(), 0.9, 0.7) * shade[..., None], col)
        opacity = np.where(logo, 1.0, opacity)
    return col, opacity


def _paint_paper(rng, fr: Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.75:
        colour = hsv(rng.uniform(0.08, 0.16), rng.uniform(0.0, 0.15), rng.uniform(0.78, 0.97))
    else:
        colour = hsv(rng.random(), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.95))
    colour = _camouflage(rng, colour, under, 0.15)
    shade = 1 + 0.08 * fractal_noise(rng, h, w, max(2.0, max(h, w) / 12), octaves=3)
    for _ in range(int(rng.integers(0, 3))):  # creases: a step in lighting and a dark line
        a = rng.uniform(0, 2 * np.pi)
        d = np.cos(a) * fr.un + np.sin(a) * fr.vn - rng.uniform(-0.5, 0.5)
        crease = 1 - 0.25 * np.exp(-0.5 * (d * fr.length / 2) ** 2)  # about 1 px wide
        shade = shade * np.where(d > 0, rng.uniform(0.75, 0.9), 1.0) * crease
    col = colour * shade[..., None]
    if rng.random() < 0.6:  # text lines
        lines = _bands(rng, fr.v, (3.5, 6), 0.35) & (np.abs(fr.un) < 0.8) & (np.abs(fr.vn) < 0.8)
        words = _bands(rng, fr.u, (6, 16), 0.75)
        col = np.where((lines & words)[..., None], col * 0.35, col)
    return col, np.ones(crop.shape, np.float32)


_WASTE_PAINTERS: dict[int, Painter] = {
    _RIGID: _paint_rigid,
    _CARDBOARD: _paint_cardboard,
    _METAL: _paint_metal,
    _SOFT: _paint_soft,
    _PAPER: _paint_paper,
}


def render(rng: np.random.Generator, h: int, w: int) -> DemoSample:
    """One waste scene of (h, w) px: background, then 3-15 objects back to front (each casting a
    shadow on what lies below), then the scene's optics (water, blur) and sensor noise."""
    scene_kind = SCENES[int(rng.integers(3))]
    canvas = {"conveyor": _conveyor, "ground": _ground, "underwater": _seabed}[scene_kind](rng, h, w)
    scene = Scene(canvas)
    # sunlight / lamps: one shadow direction per image; diffuse light underwater
    light = rng.uniform(0, 2 * np.pi)
    shadow_len = {"conveyor": (2, 6), "ground": (3, 9), "underwater": (1, 3)}[scene_kind]
    shadow_strength = {"conveyor": (0.3, 0.5), "ground": (0.35, 0.55), "underwater": (0.1, 0.25)}[scene_kind]

    n = int(rng.integers(3, 16))
    cats = rng.choice(np.arange(1, 6), size=n, p=_WASTE_P)
    shapes = []
    for cat in cats:
        base, crumple_fraction = _waste_shape(rng, int(cat))
        shape = scale_to(base, object_side(rng, h, w, _WASTE_SIZE[int(cat)]))
        if crumple_fraction > 0:
            amp = crumple_fraction * np.sqrt(abs(signed_area(shape.polygon)))
            shape = Shape(crumple(rng, shape.polygon, amp), shape.length, shape.width, shape.kind)
        shapes.append((int(cat), shape))
    # big things tend to lie underneath (piles): draw roughly largest first
    order = np.argsort([-np.sqrt(abs(signed_area(s.polygon))) * rng.uniform(0.6, 1.6) for _, s in shapes])

    for i in order:
        cat, shape = shapes[i]
        placed = scene.place(rng, shape, inside=False, min_inside=0.6, max_cover=0.7)
        if placed is None:
            continue
        # taller (bigger) things cast longer shadows
        dist = rng.uniform(*shadow_len) * min(1.0, np.sqrt(placed.mask.sum()) / 40) + 1
        scene.cast_shadow(
            placed.mask,
            (dist * np.cos(light), dist * np.sin(light)),
            sigma=rng.uniform(1.5, 3.5),
            strength=rng.uniform(*shadow_strength),
        )
        scene.draw(rng, placed, shape, cat, _WASTE_PAINTERS[cat], edge_sigma=rng.uniform(0.6, 1.0))

    canvas = scene.canvas
    if scene_kind == "underwater":
        canvas = _underwater_finish(rng, canvas)
    if rng.random() < (0.15 if scene_kind == "underwater" else 0.35):  # water blurs already
        canvas = _partial_blur(rng, canvas)
    masks, cat_ids, polys, attrs = scene.annotations()
    return DemoSample(finish(canvas, rng), masks, cat_ids, polys, attrs, scene_kind)

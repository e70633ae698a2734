"""The ``generic`` demo domain: 1-8 simple opaque shapes with clear edges on plain backgrounds.

What SAM-style promptable segmentation learns first (the ``mini`` model is pretrained on it):
ellipses, rectangles, triangles, convex/star polygons and smooth blobs, each in a colour that
contrasts with the background and with what it overlaps, on a flat, gradient or mildly noisy
background, with moderate occlusion.
"""

from __future__ import annotations

import numpy as np

from .canvas import DemoSample, Painter, Scene, Shape, finish, hsv, linear_ramp, object_side, scale_to, smooth_noise

CATEGORIES = (
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "polygon", "supercategory": "shape"},
    {"id": 5, "name": "blob", "supercategory": "shape"},
)
#: The ``scene`` recorded on each COCO image entry.
SCENES = ("flat", "gradient", "textured")


def _generic_shape(rng: np.random.Generator, category_id: int) -> Shape:
    """Unit-size local shape of a generic category (1 ellipse .. 5 blob)."""
    if category_id == 1:  # ellipse
        a, b = 1.0, rng.uniform(0.45, 1.0)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return Shape(np.stack([a * np.cos(t), b * np.sin(t)], 1), 2 * a, 2 * b)
    if category_id == 2:  # rectangle
        a, b = 1.0, rng.uniform(0.35, 1.0)
        return Shape(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), 2 * a, 2 * b)
    if category_id == 3:  # triangle, no sliver angles
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.75, 1.0, 3)
        p = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        return Shape(p - p.mean(0), 2.0, 1.5)
    if category_id == 4:  # convex polygon or a fat star
        k = int(rng.integers(5, 9))
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.15, 0.15, k)
        if rng.random() < 0.4:
            t2 = t + np.pi / k
            inner = rng.uniform(0.55, 0.75)
            t = np.stack([t, t2], 1).ravel()
            r = np.stack([np.ones(k), np.full(k, inner)], 1).ravel()
        else:
            r = rng.uniform(0.9, 1.0, k)
        return Shape(np.stack([r * np.cos(t), r * np.sin(t)], 1), 2.0, 2.0)
    # blob: smooth radial harmonics
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = 1.0 + sum(rng.uniform(0.05, 0.18) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    squash = rng.uniform(0.6, 1.0)
    return Shape(np.stack([r * np.cos(t), squash * r * np.sin(t)], 1), 2.0, 2 * squash)


def _distinct_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB, 0..255) from every colour in ``avoid``; the most
    distant of 16 draws when none qualifies."""
    best, best_d = None, -1.0
    for _ in range(16):
        c = hsv(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.3, 1.0))
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def render(rng: np.random.Generator, h: int, w: int) -> DemoSample:
    """One generic scene of (h, w) px: 1-8 distinct-coloured shapes, moderate occlusion."""
    scene_kind = SCENES[int(rng.integers(3))]
    base = hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.2, 0.85))
    canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if scene_kind in ("gradient", "textured"):
        tint = rng.normal(0, 1, 3).astype(np.float32)
        canvas += linear_ramp(rng, h, w)[..., None] * (rng.uniform(20, 45) + 8 * tint)
    if scene_kind == "textured":
        canvas += smooth_noise(rng, h, w, rng.uniform(3, 8))[..., None] * rng.uniform(4, 9)
        canvas += smooth_noise(rng, h, w, rng.uniform(40, 80))[..., None] * rng.uniform(2, 5)
    scene = Scene(canvas)
    colours: list[np.ndarray] = []

    def painter_for(colour: np.ndarray) -> Painter:
        def paint(rng, fr, crop, under):
            col = np.broadcast_to(colour, crop.shape + (3,)).astype(np.float32)
            if rng.random() < 0.5:  # gentle shading across the object
                a = rng.uniform(0, 2 * np.pi)
                ramp = (np.cos(a) * fr.un + np.sin(a) * fr.vn) * rng.uniform(8, 20)
                col = col + ramp[..., None]
            return col, np.ones(crop.shape, np.float32)

        return paint

    for _ in range(int(rng.integers(1, 9))):
        cat = int(rng.integers(1, 6))
        shape = scale_to(_generic_shape(rng, cat), object_side(rng, h, w))
        # mostly whole shapes; a few cut by the border so that case is not new on waste data
        placed = scene.place(rng, shape, inside=rng.random() < 0.85, min_inside=0.6, max_cover=0.3)
        if placed is None:
            continue
        under = canvas[placed.mask].mean(0)
        overlapped = {int(o) for o in np.unique(scene.owner[placed.mask]) if o >= 0}
        colour = _distinct_colour(rng, [under] + [colours[o] for o in overlapped], 80.0)
        colours.append(colour)
        scene.draw(rng, placed, shape, cat, painter_for(colour))
    masks, cats, polys, attrs = scene.annotations()
    return DemoSample(finish(scene.canvas, rng), masks, cats, polys, attrs, scene_kind)

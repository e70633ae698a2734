"""Generated COCO instance-segmentation datasets: the data the demos, tests and ``mini`` model use.

No real waste images ship with samadapt, so this package renders small synthetic scenes in two
domains and writes them as standard COCO datasets:

``generic``
    What SAM-style promptable segmentation learns first: 1-8 opaque shapes (ellipses, rectangles,
    triangles, convex/star polygons, smooth blobs) with clear edges, flat or gently shaded colours
    that contrast with a plain, gradient or mildly noisy background, and moderate occlusion.
    The ``mini`` model is pretrained on it (``recipes/pretrain_mini.py``).

``waste``
    What makes waste hard for SAM (TACO, ZeroWaste-f, TrashCan): 3-15 objects of five material
    categories (ZeroWaste-f's ids 1-4 plus paper) on a per-image ``scene`` - a striped, grimy
    conveyor belt, gravel/grass/soil ground, or hazy underwater seabed with caustics and particles.
    Objects are deformable and crumpled (multi-scale outline noise), transparent or semi-transparent
    (the background shows through; only a rim and highlights mark the edge), camouflaged against
    the background, heavily cluttered and occluded, cast shadows (NOT part of any mask), and carry
    labels, print, tape, folds and specular stripes whose colour edges lie INSIDE the object.
    Parts of the image may be blurred.

Both domains share the image size, the pixel value range, the sensor noise and the object-size
distribution, so the gap between them is semantic, not statistical.

Ground truth is exact by construction: every object is a polygon rasterised with pycocotools (the
same rasteriser ``COCO.annToMask`` uses), the image is composited back to front with those masks,
and each annotation is the object's VISIBLE region (its mask minus the masks of everything drawn in
front of it, including transparent objects). Instance masks of one image therefore never overlap.
Objects seen whole are stored as polygons; occluded or cut by the image border, as compressed RLE.
Objects with fewer than :data:`MIN_VISIBLE_AREA` visible pixels are drawn but not annotated.

Output layout (``file_name`` is relative to ``root/<split>/images``)::

    root/dataset.json                     generator parameters + counts (the cache key)
    root/train/annotations.json           COCO: images, annotations, categories
    root/train/images/000000.jpg ...
    root/val/annotations.json
    root/val/images/000000.jpg ...

Every image is rendered from its own ``np.random.default_rng`` seeded with
``(seed, domain, split, index)``, so a dataset is byte-identical from run to run and any image can
be re-rendered alone with :func:`render_demo_image`.

Modules: :mod:`.dataset` (the API: :func:`make_demo_dataset`, :func:`render_demo_image`, the
manifest), :mod:`.canvas` (noise, polygons, masks and the compositor both domains share),
:mod:`.generic` and :mod:`.waste` (each domain's categories, scenes and ``render``).
"""

from .canvas import MIN_VISIBLE_AREA, DemoSample
from .dataset import CATEGORIES, DEMO_VERSION, DOMAINS, SCENES, SPLITS, make_demo_dataset, render_demo_image

__all__ = [
    "DEMO_VERSION",
    "DOMAINS",
    "SPLITS",
    "CATEGORIES",
    "SCENES",
    "MIN_VISIBLE_AREA",
    "DemoSample",
    "make_demo_dataset",
    "render_demo_image",
]

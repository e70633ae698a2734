"""The generated demo data is byte-for-byte what it was (sha256 recorded from commit 60c18ce).

The demo comparison numbers in the docs come from this data: a change to the generator, or to the
mask and image code it uses, must show here first. JPEG bytes depend on Pillow's libjpeg, so the
image hashes are checked only with the Pillow version they were recorded with; the annotation
files (polygons and RLE from numpy and pycocotools) are checked everywhere.
"""

from __future__ import annotations

import hashlib

import PIL
import pytest

from samadapt.data.synthetic import make_demo_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RECORDED_WITH_PILLOW = "13.0.0"
EXPECTED = {  # make_demo_dataset(domain=..., n_train=3, n_val=2, seed=0)
    "generic": {
        "train/annotations.json": "9644554981ee3d4055c869c788859fb4ea0cf78baf46a62d1f932e7b3955fcfc",
        "val/annotations.json": "df0628b60b029609387e4ef980b0c470b6f758917852379082bfe80e9af76455",
        "train/images/000000.jpg": "a9db1a36cee4a245636e85b21a159f66d08014734b7e0b129ad9dd6db41ba1d6",
        "train/images/000002.jpg": "ecd92eed287ec18d3b4c3dfc5c2b24538df667e8bee9c1f14e396a65e3f2a5fd",
        "val/images/000001.jpg": "e934d57c10602f2105b65521d9a719afe4aa608d4c2a621739da424783c225f9",
    },
    "waste": {
        "train/annotations.json": "4002ec93d79f97b59f45c52f9dc33922a6e228d6520bbfef5fedaf3f88e9c7f5",
        "val/annotations.json": "5d2e3a9b4ea29a156c78e11875271922898ad481e1f2ada0e3f771b1bad70a14",
        "train/images/000000.jpg": "c1794d317ebe80e9a48678338c17d06fed5a9b8bf807b1bd3baae8aa8b8c5578",
        "train/images/000002.jpg": "05db62afe4bb8e51975dededa44316765dd610a1fe4f731fafc3cb6ac9880358",
        "val/images/000001.jpg": "630abc19e15123236b12e8fc1467188b8b991a8641c19213bb8003b242ac9737",
    },
}


@pytest.mark.parametrize("domain", sorted(EXPECTED))
def test_demo_data_bytes_are_unchanged(tmp_path, domain):
    root = make_demo_dataset(tmp_path / domain, domain=domain, n_train=3, n_val=2, seed=0, progress=False)
    same_pillow = PIL.__version__ == RECORDED_WITH_PILLOW
    for rel, digest in EXPECTED[domain].items():
        if rel.endswith(".jpg") and not same_pillow:
            continue
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, f"{domain}/{rel} changed"

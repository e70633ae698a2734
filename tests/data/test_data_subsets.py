"""Parts of a dataset (samadapt.data.subsets): seeded subsets of images and the sequence of a frame."""

from __future__ import annotations

import pytest

from samadapt.data.subsets import seeded_indices, seeded_subset, sequence_of
from samadapt.errors import ConfigError

# 40 frames of 4 videos, in TrashCan's naming and order (a video's frames one after the other)
FRAMES = [(k + 1, f"vid_{k // 10:06d}_frame{k % 10:07d}.jpg") for k in range(40)]


def test_seeded_subset_is_reproducible_seed_dependent_and_in_the_given_order():
    picked = seeded_subset(FRAMES, 8, seed=0, purpose="train")
    assert len(picked) == 8 and len(set(picked)) == 8 and picked == sorted(picked)
    assert seeded_subset(FRAMES, 8, seed=0, purpose="train") == picked  # the same seed: the same images
    others = [seeded_subset(FRAMES, 8, seed=s, purpose="train") for s in (1, 2, 3)]
    assert all(o != picked for o in others)  # another seed: other images
    assert picked != list(range(1, 9))  # not the first 8 (one video)
    assert len({name[:10] for i, name in FRAMES if i in picked}) > 1
    # the order given does not change the choice, only the order of the answer
    assert sorted(seeded_subset(FRAMES[::-1], 8, seed=0, purpose="train")) == picked


def test_seeded_subsets_nest_per_purpose_and_are_independent_across_purposes():
    small = seeded_subset(FRAMES, 5, seed=4, purpose="eval")
    large = seeded_subset(FRAMES, 20, seed=4, purpose="eval")
    assert set(small) <= set(large)  # the per-epoch validation subset lies in the evaluated one
    assert seeded_subset(FRAMES, 20, seed=4, purpose="train") != large


def test_seeded_subset_all_or_nothing_and_bad_sizes():
    ids = [i for i, _ in FRAMES]
    assert seeded_subset(FRAMES, None, seed=0, purpose="train") == ids
    assert seeded_subset(FRAMES, 40, seed=0, purpose="train") == ids
    assert seeded_subset(FRAMES, 99, seed=0, purpose="train") == ids
    assert seeded_subset(FRAMES, 0, seed=0, purpose="train") == []
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="number of images >= 0"):
            seeded_subset(FRAMES, bad, seed=0, purpose="train")


def test_seeded_indices_ranks_by_file_name():
    class Named:
        def __len__(self):
            return len(FRAMES)

        def image_info(self, i):
            return {"file_name": FRAMES[i][1]}

    by_name = seeded_indices(Named(), 6, seed=2, purpose="train")
    assert by_name == [i - 1 for i in seeded_subset(FRAMES, 6, seed=2, purpose="train")]
    within = seeded_indices(Named(), 3, seed=2, purpose="train", indices=by_name)  # a subset of a subset
    assert within == seeded_indices(Named(), 3, seed=2, purpose="train") and set(within) <= set(by_name)
    unnamed = list(range(10))  # no image_info: ranked by index
    assert seeded_indices(unnamed, 4, seed=0, purpose="train") == seeded_indices(unnamed, 4, seed=0, purpose="train")
    assert len(seeded_indices(unnamed, 4, seed=0, purpose="train")) == 4


@pytest.mark.parametrize(
    "name, sequence",
    [
        ("vid_000123_frame0000045.jpg", "vid_000123"),  # TrashCan
        ("09_frame_002000.PNG", "09"),  # ZeroWaste-f
        ("clip3-frame12.png", "clip3"),
        ("batch_1/000006.jpg", "batch_1/"),  # TACO: the folder is the sequence
        ("batch_1\\000007.JPG", "batch_1/"),
        ("img42.png", "img"),
        ("scene.png", "scene"),
    ],
)
def test_sequence_of(name, sequence):
    assert sequence_of(name) == sequence

"""ImageFolderDataset: layout rules, class list, subsets, bad-file policy; loaders over it."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from conformer_vision.data.datasets import (
    ImageFolderDataset,
    build_class_list,
    eval_loader,
    sample_seed,
    seeded_rngs,
    set_loader_epoch,
)
from conformer_vision.errors import ConfigError, DataError

LOGGER = "conformer_vision.data"


def origin(image: Image.Image) -> tuple[int, int]:
    """(class index, image number) encoded in pixel (0, 0) by make_tree."""
    r, g, _ = image.getpixel((0, 0))
    return r // 20, g


# ---- layout and classes ---------------------------------------------------------------------- #


def test_hidden_entries_are_not_classes_or_images(make_tree, write_image):
    root = make_tree("train", {"cat": 2, "dog": 3})
    write_image("train/.ipynb_checkpoints/x.png")
    write_image("train/.git/objects.png")
    write_image("train/cat/.hidden.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root)
    assert ds.classes == build_class_list(root) == ["cat", "dog"]
    assert [(p.parent.name, p.name) for p, _ in ds.samples] == [
        ("cat", "000.png"),
        ("cat", "001.png"),
        ("dog", "000.png"),
        ("dog", "001.png"),
        ("dog", "002.png"),
    ]
    assert ds.targets == [0, 0, 1, 1, 1]
    image, target = ds[3]
    assert target == 1 and origin(image) == (1, 1)


def test_empty_class_folder_is_an_error_naming_it(make_tree):
    root = make_tree("train", {"cat": 1})
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        ImageFolderDataset(root)


def test_missing_root_and_root_without_classes(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        build_class_list(tmp_path / "flat")


def test_val_uses_train_class_list_by_name(make_tree, caplog):
    classes = build_class_list(make_tree("train", {"ant": 1, "bee": 1, "cow": 1}))
    val = make_tree("val", {"cow": 2})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = ImageFolderDataset(val, classes=classes)
    assert ds.targets == [2, 2] and ds.classes == classes
    assert "ant" in caplog.text and "bee" in caplog.text  # missing val classes only warn


def test_unknown_val_class_is_an_error_listing_known_ones(make_tree):
    classes = build_class_list(make_tree("train", {"ant": 1, "bee": 1}))
    val = make_tree("val", {"ant": 1, "wasp": 1})
    with pytest.raises(DataError, match="wasp") as info:
        ImageFolderDataset(val, classes=classes)
    assert "['ant', 'bee']" in str(info.value)


# ---- subsets --------------------------------------------------------------------------------- #


def test_subset_is_fixed_sorted_and_a_subset(make_tree):
    root = make_tree("train", {"a": 10, "b": 10})
    full = ImageFolderDataset(root).samples
    first = ImageFolderDataset(root, num_samples=7).samples
    torch.manual_seed(123)  # the global RNG does not move it
    second = ImageFolderDataset(root, num_samples=7).samples
    assert first == second and len(first) == 7 and first == sorted(first) and set(first) <= set(full)
    assert ImageFolderDataset(root, num_samples=100).samples == full
    with pytest.raises(ConfigError):
        ImageFolderDataset(root, num_samples=0)


# ---- bad files ------------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_bad_file_is_logged_counted_and_substituted(make_tree, make_bad, caplog, kind):
    root = make_tree("train", {"a": 3, "b": 2})
    bad = make_bad(root / "a" / "001.png", kind)
    ds = ImageFolderDataset(root, max_bad_files=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        image, target = ds[1]
        again, _ = ds[1]
    assert origin(image) == origin(again) == (0, 2) and target == 0  # the next index, its own label
    assert ds.bad_files == [bad]
    assert caplog.text.count(str(bad)) == 1  # logged once, with the reason
    image, target = ds[4]
    assert (origin(image), target) == ((1, 1), 1)


def test_substitution_wraps_around(make_tree, make_bad):
    root = make_tree("train", {"a": 2, "b": 2})
    make_bad(root / "b" / "001.png", "empty")
    image, target = ImageFolderDataset(root, max_bad_files=1)[3]
    assert (origin(image), target) == ((0, 0), 0)


def test_directory_named_like_an_image_is_skipped_and_counted(make_tree, make_bad, caplog):
    root = make_tree("train", {"a": 2})
    folder = make_bad(root / "a" / "x.jpg", "dir")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = ImageFolderDataset(root, max_bad_files=1)
    assert len(ds) == 2 and ds.bad_files == [folder] and "x.jpg" in caplog.text
    with pytest.raises(DataError, match="too many unreadable"):
        ImageFolderDataset(root, max_bad_files=0)


def test_budget_by_fraction_aborts_with_clear_error(make_tree, make_bad):
    root = make_tree("train", {"a": 10})
    make_bad(root / "a" / "003.png", "text")
    make_bad(root / "a" / "007.png", "truncated")
    lenient = ImageFolderDataset(root, max_bad_fraction=0.2)  # budget 2 of 10
    assert len([lenient[i] for i in range(10)]) == 10 and len(lenient.bad_files) == 2
    strict = ImageFolderDataset(root, max_bad_fraction=0.1)  # budget 1
    strict[3]
    with pytest.raises(DataError, match=r"too many unreadable images .*2 of 10 \(budget 1"):
        strict[7]


def test_verify_header_only_and_full(make_tree, make_bad):
    root = make_tree("train", {"a": 5})
    empty = make_bad(root / "a" / "001.png", "empty")
    truncated = make_bad(root / "a" / "002.png", "truncated")
    assert ImageFolderDataset(root, max_bad_files=5).verify() == [empty]
    assert ImageFolderDataset(root, max_bad_files=5).verify(full=True) == [empty, truncated]
    with pytest.raises(DataError, match="too many unreadable"):
        ImageFolderDataset(root, max_bad_files=1).verify(full=True)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.tensor(origin(image))


def train_loader(ds, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool, num_workers: int = 0) -> DataLoader:
    """A loader as training builds one (``train.build_data``): a DistributedSampler, its own generator."""
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator()
    loader = DataLoader(
        ds, batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last, generator=generator
    )
    set_loader_epoch(loader, 0)
    return loader


def test_bad_files_found_in_workers_are_seen_by_the_main_process(make_tree, make_bad):
    root = make_tree("train", {"a": 6, "b": 6})
    bad = [make_bad(root / "a" / "002.png", "truncated"), make_bad(root / "b" / "004.png", "text")]
    ds = ImageFolderDataset(root, transform=to_tensor, max_bad_files=2)
    loader = train_loader(ds, 4, shuffle=True, num_workers=2, seed=0, drop_last=False)
    batches = [batch for batch in loader]
    assert sum(len(targets) for _, targets in batches) == 12  # every index still yields a sample
    assert ds.bad_files == sorted(bad)


def test_budget_exceeded_in_a_worker_reaches_the_main_process(make_tree, make_bad):
    root = make_tree("train", {"a": 4})
    make_bad(root / "a" / "001.png", "empty")
    ds = ImageFolderDataset(root, transform=to_tensor, max_bad_files=0)
    loader = train_loader(ds, 2, shuffle=False, num_workers=1, seed=0, drop_last=False)
    with pytest.raises(DataError, match="too many unreadable") as info:
        list(loader)
    # Without the traceback's frames the loader is freed now and its worker stops at once, instead
    # of in a later garbage collection that waits 5 s for it.
    info.value.__traceback__ = None
    del info


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_drop_policy_leaves_unreadable_images_out_once_each(make_tree, make_bad, caplog, workers):
    """Evaluation's policy: every readable image exactly once, no stand-in for a bad one, a batch of
    only bad files skipped; the bad files counted in the main process, also from workers."""
    root = make_tree("val", {"a": 4, "b": 3})
    bad = [make_bad(root / "a" / f"00{k}.png", "text") for k in (0, 1)] + [make_bad(root / "b" / "002.png", "empty")]
    ds = ImageFolderDataset(root, transform=to_tensor, max_bad_files=3, bad_policy="drop")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batches = list(eval_loader(ds, 2, num_workers=workers, prefetch=2))
    seen = [tuple(x.tolist()) for images, _ in batches for x in images]
    assert seen == [(0, 2), (0, 3), (1, 0), (1, 1)]  # in order, the first batch (two bad files) skipped
    assert [t for _, targets in batches for t in targets.tolist()] == [0, 0, 1, 1]
    assert ds.bad_files == sorted(bad) and ds[0] is None
    if workers == 0:
        assert "dropping unreadable image" in caplog.text and "(not counted)" in caplog.text


def test_bad_file_budget_error_names_the_option(make_tree, make_bad):
    root = make_tree("val", {"a": 10})
    make_bad(root / "a" / "003.png", "text")
    with pytest.raises(DataError) as info:
        ImageFolderDataset(root, max_bad_fraction=0.05, bad_policy="drop")[3]
    message = str(info.value)
    assert "1 of 10 (budget 0: max_bad_files_fraction 0.05 of the entries)" in message
    assert "raise --max_bad_files_fraction (e.g. --max_bad_files_fraction 0.1)" in message
    assert "max_bad_fraction" not in message


# ---- loader ---------------------------------------------------------------------------------- #


def order(loader) -> list[tuple[int, int]]:
    return [tuple(x.tolist()) for images, _ in loader for x in images]


def test_loader_order_depends_on_seed_and_epoch_only(make_tree):
    ds = ImageFolderDataset(make_tree("train", {"a": 8, "b": 8}), transform=to_tensor)
    loader = train_loader(ds, 4, shuffle=True, seed=3, drop_last=True)
    epoch0 = order(loader)
    set_loader_epoch(loader, 1)
    epoch1 = order(loader)
    set_loader_epoch(loader, 0)
    assert order(loader) == epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    other = train_loader(ds, 4, shuffle=True, seed=3, drop_last=True)
    assert order(other) == epoch0
    with pytest.raises(TypeError, match="DistributedSampler"):
        set_loader_epoch(DataLoader(ds, 4), 0)


def test_an_index_seed_pair_augments_the_same_way_anywhere_and_leaves_global_rngs_alone(make_tree):
    """dataset[(index, seed)]: the transform's python / numpy / torch randomness comes from `seed`
    (same item in any process or worker), and the caller's RNG streams do not move."""
    import random

    import numpy as np

    def noisy(image: Image.Image) -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    ds = ImageFolderDataset(make_tree("train", {"a": 3}), transform=noisy)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = ds[(2, sample_seed(0, 1, 2))]
    after = random.random(), float(np.random.rand()), float(torch.rand(()))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == after  # untouched by ds[...]
    assert ds[(2, sample_seed(0, 1, 2))] == first and ds[(2, sample_seed(0, 2, 2))] != first
    assert ds[(1, sample_seed(0, 1, 1))][1] == 0 and ds[1][1] == 0
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(200)}
    assert len(seeds) == 1800 and all(0 <= x < 2**63 for x in seeds)
    with seeded_rngs(5):
        a = torch.rand(3)
    with seeded_rngs(5):
        assert torch.equal(torch.rand(3), a)

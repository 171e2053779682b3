"""Chapter 13: the EuroSAT and magnetic-tile loaders, the transfer helper, the class metrics and the
localisation metrics (pointing game, mass inside the mask) on maps and masks whose answers are known."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_from_scratch.data import ImageSet
from vit_from_scratch.datasets import (EUROSAT_CLASSES, MAGNETIC_TILE_CLASSES, MaskedImageSet, load_eurosat,
                                       load_magnetic_tiles, split_masked, three_way_split)
from vit_from_scratch.transfer import (class_report, class_weights, confusion_matrix, equal_steps_set,
                                       freeze_all_but, mass_inside, patch_fractions, pointing_game,
                                       transfer_cnn, transfer_model, weighted_cross_entropy)

REAL = Path(os.environ.get("VIT_DATA_DIR", "/nonexistent"))


# Loaders on synthetic trees ---------------------------------------------------------------------
def _eurosat_tree(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for name in EUROSAT_CLASSES:
        folder = root / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{name}_{i}.png")
    return root


def test_eurosat_loads_through_torchvisions_layout_and_resizes(tmp_path):
    root = _eurosat_tree(tmp_path)
    data = load_eurosat(root, download=False)
    assert data.classes == EUROSAT_CLASSES and data.images.shape == (50, 3, 64, 64)
    assert torch.bincount(data.labels).tolist() == [5] * 10
    saved = np.asarray(Image.open(root / "eurosat/2750/Forest/Forest_3.png"))  # lossless: the same pixels
    assert torch.equal(data.images[5 + 3], torch.from_numpy(saved.copy()).permute(2, 0, 1))
    small = load_eurosat(root, size=32, download=False)
    assert small.images.shape == (50, 3, 32, 32) and torch.equal(small.labels, data.labels)
    assert "2750" not in small.source  # no path of the machine in what a notebook prints


def test_missing_eurosat_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_eurosat(tmp_path, download=False)
    message = str(error.value)
    assert "eurosat/2750" in message and "download=True" in message and "VIT_DATA_DIR" in message


def test_eurosat_is_downloaded_by_torchvision_when_the_network_allows(tmp_path, monkeypatch):
    import torchvision.datasets

    import vit_from_scratch.datasets as datasets
    calls = []
    real = torchvision.datasets.EuroSAT

    def fake(root, download=False):  # what torchvision's download leaves behind, then its own checks
        calls.append(download)
        if download:
            _eurosat_tree(Path(root), per_class=2)
        return real(root)

    monkeypatch.setattr(torchvision.datasets, "EuroSAT", fake)
    monkeypatch.setattr(datasets, "network_available", lambda host: False)
    with pytest.raises(FileNotFoundError, match="no network"):
        load_eurosat(tmp_path)  # download=None asks the network first
    assert calls == []
    monkeypatch.setattr(datasets, "network_available", lambda host: True)
    data = load_eurosat(tmp_path)
    assert calls == [True, False] and len(data) == 20  # downloaded, then read by the same call


def test_three_way_split_is_stratified_disjoint_and_fixed():
    labels = torch.arange(10).repeat_interleave(20)  # 10 classes x 20
    images = torch.arange(200, dtype=torch.int64).view(200, 1, 1, 1)
    data = ImageSet((images % 256).to(torch.uint8).expand(200, 1, 1, 2).contiguous(), labels, tuple("abcdefghij"))
    data.images[:, 0, 0, 1] = (images.flatten() // 256).to(torch.uint8)  # each image carries its number
    number = lambda part: (part.images[:, 0, 0, 0].long() + 256 * part.images[:, 0, 0, 1].long()).tolist()
    train, val, test = three_way_split(data, val=0.1, test=0.2, seed=3)
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    assert torch.bincount(val.labels).tolist() == [2] * 10 and torch.bincount(test.labels).tolist() == [4] * 10
    ids = [set(number(p)) for p in (train, val, test)]
    assert set.union(*ids) == set(range(200)) and sum(map(len, ids)) == 200
    again = three_way_split(data, val=0.1, test=0.2, seed=3)
    assert all(number(a) == number(b) for a, b in zip((train, val, test), again))
    assert number(three_way_split(data, val=0.1, test=0.2, seed=4)[2]) != number(test)


def _tile_tree(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(MAGNETIC_TILE_CLASSES):
        folder = root / "magnetic-tile" / f"MT_{name}" / "Imgs"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = 100 + 20 * i, 80 + 30 * label  # every image its own size
            Image.fromarray(np.full((h, w), 10 * label + i, np.uint8)).save(folder / f"{name}_{i}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[: h // 2, : w // 2] = 255  # the top-left quarter is the "defect"
            Image.fromarray(mask).save(folder / f"{name}_{i}.png")
    return root


def test_magnetic_tiles_resize_to_one_size_gray_in_three_channels_with_masks(tmp_path):
    tiles = load_magnetic_tiles(_tile_tree(tmp_path), size=32)
    assert isinstance(tiles, MaskedImageSet) and tiles.data.classes == MAGNETIC_TILE_CLASSES
    assert tiles.data.images.shape == (30, 3, 32, 32) and tiles.masks.shape == (30, 1, 32, 32)
    assert torch.equal(tiles.data.images[:, 0], tiles.data.images[:, 2])  # gray repeated
    assert tiles.data.labels.tolist() == [c for c in range(6) for _ in range(5)]
    assert abs(int(tiles.data.images[7, 0, 16, 16]) - 12) <= 2  # class 1, image 2: gray level 12 (JPEG)
    # the mask was resized the same way: its top-left quarter is the defect, a quarter of the area
    assert (tiles.masks[:, 0, :14, :14] == 255).all() and (tiles.masks[:, 0, 18:, :] == 0).all()
    assert abs(tiles.masks.float().mean().item() / 255 - 0.25) < 0.02


def test_magnetic_tiles_are_downloaded_from_the_authors_repository_when_the_network_allows(tmp_path, monkeypatch):
    import urllib.request
    import zipfile

    import vit_from_scratch.datasets as datasets
    tree = _tile_tree(tmp_path / "source", per_class=2) / "magnetic-tile"
    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as z:  # GitHub's archive: everything under one top folder
        for path in tree.rglob("*"):
            z.write(path, f"Magnetic-tile-defect-datasets.-cc4eb53/{path.relative_to(tree)}")
    urls = []
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, to: urls.append(url) or shutil_copy(archive, to))
    monkeypatch.setattr(datasets, "network_available", lambda host: False)
    with pytest.raises(FileNotFoundError, match="no network"):
        load_magnetic_tiles(tmp_path / "data")  # download=None asks the network first
    assert urls == []
    monkeypatch.setattr(datasets, "network_available", lambda host: True)
    tiles = load_magnetic_tiles(tmp_path / "data", size=16)
    assert urls == [datasets.MAGNETIC_TILE_URL] and len(tiles) == 12
    assert (tmp_path / "data" / "magnetic-tile" / "MT_Free" / "Imgs").is_dir()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["magnetic-tile"]  # no leftovers
    assert len(load_magnetic_tiles(tmp_path / "data", size=16)) == 12 and urls == [datasets.MAGNETIC_TILE_URL]


def shutil_copy(a, b):
    import shutil
    shutil.copy(a, b)


def test_masked_split_keeps_every_mask_with_its_image(tmp_path):
    tiles = load_magnetic_tiles(_tile_tree(tmp_path, per_class=10), size=16)
    tiles.masks[:] = tiles.data.images[:, :1]  # a mask that names its image
    train, val, test = split_masked(tiles, val=0.2, test=0.2, seed=0)
    assert (len(train), len(val), len(test)) == (36, 12, 12)
    for part in (train, val, test):
        assert torch.equal(part.masks, part.data.images[:, :1])
        assert torch.bincount(part.data.labels, minlength=6).min() > 0  # stratified: every class in every part


def test_malformed_or_missing_tile_tree_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="Magnetic-tile-defect-datasets"):
        load_magnetic_tiles(tmp_path / "nothing", download=False)
    root = _tile_tree(tmp_path / "a")
    (root / "magnetic-tile/MT_Crack/Imgs/Crack_2.png").unlink()
    with pytest.raises(ValueError, match="Crack_2.jpg has no mask"):
        load_magnetic_tiles(root)
    root = _tile_tree(tmp_path / "b")
    (root / "magnetic-tile/MT_Fray").rename(root / "magnetic-tile/MT_Frayed")
    with pytest.raises(ValueError, match="MT_Frayed"):
        load_magnetic_tiles(root)


@pytest.mark.skipif(not (REAL / "eurosat" / "2750").is_dir(), reason="no EuroSAT copy in VIT_DATA_DIR")
def test_real_eurosat_has_its_documented_counts():
    data = load_eurosat(REAL, size=32)
    counts = dict(zip(data.classes, torch.bincount(data.labels).tolist()))
    assert len(data) == 27000 and counts["Pasture"] == 2000 and counts["Forest"] == 3000


@pytest.mark.skipif(not (REAL / "magnetic-tile").is_dir(), reason="no magnetic-tile copy in VIT_DATA_DIR")
def test_real_magnetic_tiles_have_their_documented_counts():
    tiles = load_magnetic_tiles(REAL, size=32)
    assert torch.bincount(tiles.data.labels).tolist() == [115, 85, 57, 32, 952, 103]
    free = tiles.data.labels == MAGNETIC_TILE_CLASSES.index("Free")
    assert tiles.masks[free].max() == 0 and tiles.masks[~free].float().mean() > 0  # defects are marked


# Transfer ---------------------------------------------------------------------------------------
def test_transfer_model_keeps_the_trained_weights_with_a_new_zero_head():
    model = transfer_model(6, image_size=64)
    assert model.config.num_classes == 6 and model.config.image_size == 64 and model.head.out_features == 6
    assert model.pos_embed.shape[1] == 1 + 16 * 16
    assert torch.equal(model(torch.randn(2, 3, 64, 64)), torch.zeros(2, 6))  # every class equally likely
    from vit_from_scratch.checkpoints import load_trained_model
    trained, _ = load_trained_model(device="cpu")
    assert torch.equal(model.blocks[3].mlp.fc1.weight, trained.blocks[3].mlp.fc1.weight)


def test_freezing_leaves_only_the_last_blocks_the_norm_and_the_head_trainable():
    model = transfer_model(4, trainable_blocks=2)
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.4", "blocks.5", "norm", "head"}
    every_block = freeze_all_but(model, 6)  # the embedding, before the first block, stays as trained
    assert all(p.requires_grad for p in every_block.blocks.parameters())
    assert not every_block.patch_embed.proj.weight.requires_grad and not every_block.pos_embed.requires_grad
    with pytest.raises(ValueError, match="between 0 and the depth 6"):
        freeze_all_but(model, 7)


# Class metrics ----------------------------------------------------------------------------------
def test_class_report_sees_what_accuracy_hides():
    labels = torch.tensor([0] * 90 + [1] * 10)
    always_zero = torch.zeros(100, dtype=torch.long)  # predicts the majority class only
    report = class_report(confusion_matrix(always_zero, labels, 2))
    assert report["accuracy"] == pytest.approx(0.9) and report["balanced_accuracy"] == pytest.approx(0.5)
    assert report["recall"].tolist() == [1.0, 0.0]
    assert report["macro_f1"] == pytest.approx((2 * 0.9 / 1.9 + 0) / 2)
    assert confusion_matrix(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1]), 2).tolist() == [[1, 1], [0, 1]]


def test_class_weights_balance_the_classes_and_the_weighted_loss_uses_them():
    labels = torch.tensor([0] * 6 + [1] * 2)
    w = class_weights(labels, 2)
    assert w.tolist() == pytest.approx([8 / 12, 8 / 4])
    assert (w[labels].sum() / 2).item() == pytest.approx(4.0) and w[0] * 6 == pytest.approx(w[1] * 2)
    logits, targets = torch.randn(8, 2), torch.nn.functional.one_hot(labels, 2).float()
    plain = weighted_cross_entropy(None)(logits, targets, None)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    other = torch.tensor([1.0, 3.0])  # weights whose batch sum is not the batch size
    weighted = weighted_cross_entropy(other)(logits, targets, None)
    assert weighted.item() == pytest.approx((other[labels] * per).mean().item(), rel=1e-6)


# Localisation -----------------------------------------------------------------------------------
def _masks():
    masks = torch.zeros(3, 1, 16, 16)
    masks[0, 0, :4, :4] = 1  # one whole patch of a 4x4 grid (patches of 4 px): area 1/16
    masks[1, 0, 5:7, 9:11] = 1  # 4 pixels inside patch (1, 2): area 4/256
    masks[2, 0, 6:10, 6:10] = 1  # 16 pixels spread over four patches (1..2, 1..2)
    return masks


def test_patch_fractions_are_area_fractions():
    f = patch_fractions(_masks(), (4, 4))
    assert f.shape == (3, 4, 4) and f[0, 0, 0] == 1 and f[1, 1, 2] == 4 / 16 and f[2, 1:3, 1:3].eq(0.25).all()
    torch.testing.assert_close(f.mean(dim=(1, 2)), _masks().mean(dim=(1, 2, 3)))
    assert torch.equal(patch_fractions((_masks() * 255).to(torch.uint8), (4, 4)), f)
    with pytest.raises(ValueError, match="does not tile"):
        patch_fractions(_masks(), (5, 5))


def test_a_map_one_hot_on_the_mask_hits_and_holds_all_its_mass():
    masks, maps = _masks(), torch.zeros(3, 4, 4)
    maps[0, 0, 0] = maps[1, 1, 2] = maps[2, 2, 2] = 1
    assert pointing_game(maps, masks).score.tolist() == [1, 1, 1]
    assert mass_inside(maps, masks).score.tolist() == [1, 0.25, 0.25]  # the share of the patch on the defect
    assert mass_inside(maps[:1], masks[:1]).score.item() == 1
    off = torch.zeros(3, 4, 4)
    off[:, 3, 3] = 1  # off the defect everywhere
    assert pointing_game(off, masks).score.tolist() == [0, 0, 0] and mass_inside(off, masks).score.eq(0).all()


def test_a_uniform_map_scores_exactly_chance():
    masks, uniform = _masks(), torch.full((3, 4, 4), 1 / 16)
    mass, point = mass_inside(uniform, masks), pointing_game(uniform, masks)
    torch.testing.assert_close(mass.score, masks.mean(dim=(1, 2, 3)).double())  # the area fraction
    torch.testing.assert_close(mass.score, mass.chance)
    torch.testing.assert_close(point.score, point.chance)  # all tied: the share of patches touching
    assert point.chance.tolist() == [1 / 16, 1 / 16, 4 / 16]


def test_empty_masks_are_left_out_and_bad_maps_refused():
    masks = torch.zeros(1, 16, 16)
    assert math.isnan(pointing_game(torch.rand(1, 4, 4), masks).score.item())
    assert math.isnan(mass_inside(torch.rand(1, 4, 4), masks).chance.item())
    with pytest.raises(ValueError, match="patch grid"):
        mass_inside(torch.rand(2, 4, 4), torch.ones(1, 16, 16))  # two maps, one mask
    with pytest.raises(ValueError, match="non-negative"):
        pointing_game(-torch.rand(1, 4, 4), torch.ones(1, 16, 16))


# Issue 28: faults, second probe ------------------------------------------------------------------
def test_eurosat_with_a_missing_or_a_stray_class_folder_is_refused_naming_it(tmp_path):
    import shutil
    root = _eurosat_tree(tmp_path / "a", per_class=1)
    shutil.rmtree(root / "eurosat/2750/Highway")  # 9 classes: the labels after it would shift
    with pytest.raises(ValueError, match="missing Highway") as info:
        load_eurosat(root, download=False)
    assert "\n" not in str(info.value)
    root = _eurosat_tree(tmp_path / "b", per_class=1)
    (root / "eurosat/2750/Desert").mkdir()  # a stray folder: an 11th class
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "eurosat/2750/Desert/0.png")
    with pytest.raises(ValueError, match="Desert"):
        load_eurosat(root, download=False)


def test_16_bit_tile_masks_are_scaled_not_clipped(tmp_path):
    root = _tile_tree(tmp_path, per_class=1)
    for mask in root.glob("magnetic-tile/MT_*/Imgs/*.png"):  # the same masks as 16-bit PNGs
        defect = np.array(Image.open(mask)) > 0
        Image.fromarray(np.where(defect, 65535, 20000).astype(np.uint16)).save(mask)  # 20000: 78 of 255
    tiles = load_magnetic_tiles(root, size=16)
    assert abs(tiles.masks.float().mean().item() / 255 - 0.25) < 0.02  # still a quarter, not all defect


def test_nan_and_infinite_maps_are_refused():
    masks = torch.ones(1, 16, 16)
    for bad in (float("nan"), float("inf")):
        maps = torch.rand(1, 4, 4)
        maps[0, 1, 1] = bad
        for score in (pointing_game, mass_inside):
            with pytest.raises(ValueError, match="finite"):
                score(maps, masks)


def test_an_all_zero_map_scores_exactly_chance_in_both_scores():
    masks, zero = _masks(), torch.zeros(3, 4, 4)
    for score in (pointing_game, mass_inside):
        result = score(zero, masks)
        torch.testing.assert_close(result.score, result.chance)  # it points nowhere: a uniform map


def test_tiles_keep_their_file_names_through_a_selection(tmp_path):
    tiles = load_magnetic_tiles(_tile_tree(tmp_path, per_class=3), size=16)
    assert tiles.names is not None and len(tiles.names) == len(tiles) == 18
    part = tiles.select(torch.tensor([4, 0]), "two")
    assert part.names == (tiles.names[4], tiles.names[0])
    assert torch.equal(part.masks, tiles.masks[[4, 0]]) and torch.equal(part.data.labels, tiles.data.labels[[4, 0]])
    with pytest.raises(ValueError, match="one file name per image"):
        MaskedImageSet(tiles.data, tiles.masks, names=("a",))


def test_transfer_cnn_gets_a_zero_head_and_leaves_the_original_alone():
    from vit_from_scratch.cnn import SmallResNet

    torch.manual_seed(0)
    trained = SmallResNet(num_classes=10, widths=(4, 8))
    moved = transfer_cnn(trained, 3)
    assert moved.head.out_features == 3 and (moved.head.weight == 0).all() and trained.head.out_features == 10
    assert torch.equal(moved.stem[0].weight, trained.stem[0].weight)
    assert moved.stem[0].weight.data_ptr() != trained.stem[0].weight.data_ptr()  # a copy
    out = moved.eval()(torch.randn(2, 3, 16, 16))
    assert torch.equal(out, torch.zeros(2, 3))  # every class equally likely at the start
    with pytest.raises(ValueError, match="head"):
        transfer_cnn(torch.nn.Conv2d(3, 3, 1), 3)


def test_equal_steps_sets_have_the_same_size_whatever_the_labels():
    data = ImageSet(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(),
                    torch.arange(10) % 2, ("a", "b"), "toy")
    small = equal_steps_set(data, 4, 8, seed=0)  # 32 images from 10: three whole passes and a part
    assert len(small) == 32
    ids = small.images[:, 0, 0, 0].long()
    for k in range(3):
        assert sorted(ids[10 * k:10 * (k + 1)].tolist()) == list(range(10))  # each pass sees every image once
    assert (small.labels == ids % 2).all()
    assert len(equal_steps_set(data, 1, 4, seed=0)) == 4
    with pytest.raises(ValueError, match="positive"):
        equal_steps_set(data, 0, 8)

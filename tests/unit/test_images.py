"""Image readers (folders, tables, .npz, bundled sets) and pre-processing/augmentation, on tiny Pillow images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.data.doctor import CHECKS, DoctorContext
from tunelab.data.images import (
    BUNDLED_IMAGE_DATA,
    describe_bundled_images,
    image_folder_for_check,
    read_images,
    read_npz_splits,
)
from tunelab.data.sources import DataError
from tunelab.vision.transforms import (
    ImageLoadError,
    ImageProcessing,
    PixelCollator,
    TrainAugment,
    eval_transform,
    load_image,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def solid(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 40),
          mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


def class_folder(root: Path) -> Path:
    solid(root / "dog" / "b.png", (10, 10, 10))
    solid(root / "dog" / "a.png", (20, 20, 20))
    solid(root / "cat" / "x.jpg", (30, 30, 30))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


# ---------------------------------------------------------------- readers


def test_folder_per_class_keeps_non_images_and_sorts(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "pets")
    ds = read_images(str(root))
    assert ds.column_names == ["image", "label", "location"]
    names = [Path(p).name for p in ds["image"]]
    assert names == ["notes.txt", "x.jpg", "a.png", "b.png"]  # classes sorted, files sorted, hidden skipped
    assert ds["label"] == ["cat", "cat", "dog", "dog"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ds["image"])
    assert ds["location"][2] == str(root / "dog" / "a.png")


def test_doctor_flags_the_non_image_file(tmp_path: Path) -> None:
    ds = read_images(str(class_folder(tmp_path / "pets")))
    ctx = DoctorContext(splits={}, labels=[], images={"train": image_folder_for_check(ds)})
    finding = CHECKS["image-not-an-image"][1](ctx)
    assert finding is not None and finding.count == 1
    assert finding.examples[0].startswith(str(tmp_path / "pets" / "cat" / "notes.txt"))
    assert CHECKS["image-unreadable"][1](ctx) is None


def test_folder_of_split_folders_is_explained(tmp_path: Path) -> None:
    solid(tmp_path / "data" / "train" / "ants" / "1.png")
    solid(tmp_path / "data" / "val" / "ants" / "2.png")
    with pytest.raises(DataError, match="look like splits"):
        read_images(str(tmp_path / "data"))


def test_csv_with_relative_paths(tmp_path: Path) -> None:
    solid(tmp_path / "set" / "img" / "one.png")
    solid(tmp_path / "set" / "img" / "two.png")
    table = tmp_path / "set" / "labels.csv"
    table.write_text("file,kind\nimg/one.png,a\nimg/two.png,b\n")
    ds = read_images(str(table), image_column="file", label_column="kind")
    assert ds["image"] == [str((tmp_path / "set" / "img" / n).resolve()) for n in ("one.png", "two.png")]
    assert ds["label"] == ["a", "b"]
    assert ds["location"] == [f"{table}:2", f"{table}:3"]

    jsonl = tmp_path / "elsewhere.jsonl"
    jsonl.write_text(json.dumps({"image": "img/one.png", "label": 3}) + "\n")
    ds = read_images(str(jsonl), base_dir=tmp_path / "set")
    assert ds["image"] == [str((tmp_path / "set" / "img" / "one.png").resolve())] and ds["label"] == ["3"]


def test_missing_column_names_file_columns_and_closest(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("image_path,label\na.png,x\n")
    with pytest.raises(DataError) as err:
        read_images(str(table))
    message = str(err.value)
    assert str(table) in message and "['image_path', 'label']" in message and "'image_path'" in message
    assert "closest" in message


def medmnist(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path,
             train_images=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [2], [1], [0]], dtype=np.uint8),
             val_images=rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8),
             val_labels=np.array([[1], [2]]),
             test_images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
             test_labels=np.array([2, 0, 1]))
    return path


def test_npz_medmnist_splits_and_cache_reuse(tmp_path: Path, _cache: Path) -> None:
    npz = medmnist(tmp_path / "organ.npz")
    splits = read_npz_splits(npz)
    assert set(splits) == {"train", "validation", "test"}
    train = splits["train"]
    assert len(train) == 5 and train["label"] == ["0", "1", "2", "1", "0"]
    assert train["location"][4] == f"{npz}:train_images[4]"
    assert splits["validation"]["location"][1] == f"{npz}:val_images[1]"
    assert splits["test"]["label"] == ["2", "0", "1"]
    first = Path(train["image"][4])
    assert first.parent.parent.parent == _cache / "images" and first.name == "4.png"
    assert len(first.parent.parent.name) == 16 and first.parent.name == "train"
    with np.load(npz) as arrays, Image.open(first) as im:
        assert np.array_equal(np.asarray(im), arrays["train_images"][4])
    with Image.open(splits["validation"]["image"][0]) as im:
        assert im.mode == "RGB" and im.size == (28, 28)

    before = {p: p.stat().st_mtime_ns for p in first.parent.parent.rglob("*")}
    again = read_images(str(npz))  # the train split, from the cache
    assert again["image"] == train["image"] and again["label"] == train["label"]
    assert {p: p.stat().st_mtime_ns for p in first.parent.parent.rglob("*")} == before


def test_npz_xy_and_flattened_rows(tmp_path: Path) -> None:
    npz = tmp_path / "flat.npz"
    np.savez(npz, x=np.linspace(0, 1, 3 * 16).reshape(3, 16), y=np.array([1.0, 0.0, 1.0]))
    ds = read_images(str(npz))
    assert ds["label"] == ["1", "0", "1"] and ds["location"][0] == f"{npz}:x[0]"
    with Image.open(ds["image"][2]) as im:
        assert im.size == (4, 4) and np.asarray(im).max() == 255
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="not a known layout"):
        read_images(str(bad))


def test_bundled_digits() -> None:
    assert set(BUNDLED_IMAGE_DATA) == {"mnist-5k", "digits"} and "digits" in describe_bundled_images()
    ds = read_images("digits")
    assert len(ds) == 1797
    assert sorted(set(ds["label"])) == [str(i) for i in range(10)]
    assert ds["location"][17] == "digits:17"
    from sklearn.datasets import load_digits

    with Image.open(ds["image"][0]) as im:  # 0..16 scaled to 0..255
        assert im.size == (8, 8) and im.mode == "L"
        assert np.array_equal(np.asarray(im), np.round(load_digits().images[0] * 255 / 16))
    with pytest.raises(DataError, match="did you mean the bundled set 'digits'"):
        read_images("digitz")


# ---------------------------------------------------------------- transforms


def test_eval_transform_shape_and_normalisation() -> None:
    proc = ImageProcessing(size=20, crop=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = [Image.new("RGB", (30, 50), (255, 0, 51)), Image.new("L", (17, 17), 255)]
    batch = eval_transform(images, proc)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, (0.2 - 0.0) / 1.0])
    assert torch.allclose(batch[0].mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(batch[0], expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5)
    assert torch.allclose(batch[1], torch.tensor([1.0, 3.0, 1.0]).view(3, 1, 1).expand(3, 16, 16), atol=1e-5)


def test_centre_crop_keeps_the_centre() -> None:
    image = Image.new("RGB", (60, 40), (255, 0, 0))  # red sides, blue centre square
    image.paste((0, 0, 255), (10, 0, 50, 40))
    proc = ImageProcessing(size=20, crop=20, mean=(0, 0, 0), std=(1, 1, 1))
    out = eval_transform([image], proc)[0]
    inner = out[:, :, 1:-1]  # the outermost columns may blend across the old boundary
    assert torch.allclose(inner[2], torch.ones_like(inner[2]), atol=0.02)
    assert inner[0].max() < 0.02


def test_load_image_converts_and_names_bad_paths(tmp_path: Path) -> None:
    gray = solid(tmp_path / "g.png", (90, 0, 0), mode="L")
    assert load_image(gray).mode == "RGB" and load_image(gray).getpixel((0, 0)) == (90, 90, 90)
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(rgba)
    assert load_image(rgba).getpixel((1, 1)) == (10, 20, 30)
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when shown
    Image.new("RGB", (30, 10)).save(rotated, exif=exif)
    assert load_image(rotated).size == (10, 30)
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="fake.jpg"):
        load_image(tmp_path / "fake.jpg")


def noise_image(seed: int, size: tuple[int, int] = (48, 36)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_augmentation_is_reproducible_per_seed_epoch_and_batch() -> None:
    proc = ImageProcessing(size=28, crop=24)
    images = [noise_image(i) for i in range(3)]
    aug = TrainAugment(proc, seed=7)
    first = aug(images)
    assert first.shape == (3, 3, 24, 24)
    second_batch = aug(images)  # batch 1 of epoch 0: different draws
    assert not torch.equal(first, second_batch)
    again = TrainAugment(proc, seed=7)
    assert torch.equal(again(images), first) and torch.equal(again(images), second_batch)
    aug.set_epoch(1)
    epoch1 = aug(images)
    assert not torch.equal(epoch1, first)
    aug.set_epoch(1)
    assert torch.equal(aug(images), epoch1)
    assert torch.equal(aug(images, batch_index=0), epoch1)
    assert not torch.equal(TrainAugment(proc, seed=8)(images), first)


def test_collator_eval_train_and_bad_path(tmp_path: Path) -> None:
    proc = ImageProcessing(size=20, crop=16)
    paths = [str(solid(tmp_path / f"{i}.png", (i * 50, 0, 0), size=(30, 24))) for i in range(3)]
    features = [{"image": p, "labels": i} for i, p in enumerate(paths)]
    batch = PixelCollator(proc, train=False)(features)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2]
    assert "labels" not in PixelCollator(proc, train=False)([{"image": paths[0]}])
    collate = PixelCollator(proc, train=True, augment=TrainAugment(proc, seed=1, flip=False))
    assert collate(features)["pixel_values"].shape == (3, 3, 16, 16)
    with pytest.raises(ImageLoadError, match="missing.png"):
        collate([{"image": str(tmp_path / "missing.png"), "labels": 0}])
    gray = ImageProcessing(size=20, crop=16, grayscale_to_rgb=False)
    assert PixelCollator(gray, train=True)(features)["pixel_values"].shape == (3, 1, 16, 16)


def test_preprocessor_config_round_trip_and_hf_configs(tmp_path: Path) -> None:
    proc = ImageProcessing.for_crop(224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert proc.size == 256
    proc.save(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 256} and saved["crop_size"] == {"height": 224, "width": 224}
    assert saved["image_processor_type"] == "tunelab" and saved["do_normalize"] is True
    assert ImageProcessing.load(tmp_path) == proc
    assert ImageProcessing.from_dict(proc.to_dict()) == proc

    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": 224, "width": 224}}))
    hf = ImageProcessing.from_hf_config(vit)
    assert (hf.size, hf.crop, hf.mean, hf.std) == (224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    convnext = tmp_path / "convnext"
    convnext.mkdir()
    (convnext / "preprocessor_config.json").write_text(json.dumps({
        "crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "size": {"shortest_edge": 224}}))
    assert (ImageProcessing.from_hf_config(convnext).size, ImageProcessing.from_hf_config(convnext).crop) == (256, 224)
    resnet_int = ImageProcessing.from_dict({"size": 256, "crop_size": 224})
    assert (resnet_int.size, resnet_int.crop, resnet_int.mean) == (256, 224, (0.485, 0.456, 0.406))
    assert os.path.basename(str(proc.save(tmp_path / "again"))) == "preprocessor_config.json"

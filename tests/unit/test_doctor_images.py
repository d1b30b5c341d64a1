"""Image doctor checks: tiny Pillow-written fixtures per problem, plus the real hymenoptera placeholder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import tunelab.data.checks.images
from tunelab.data.checks.images import sniff
from tunelab.data.doctor import CHECKS, DoctorContext, Finding

IMAGE_CHECKS = [name for name, (_, fn) in CHECKS.items() if fn.__module__ == tunelab.data.checks.images.__name__]
HYMENOPTERA = Path("/work/shared/datasets/images_hymenoptera/hymenoptera_data")


def noise(seed: int, size: tuple[int, int] = (40, 40), mode: str = "RGB") -> Image.Image:
    """A random picture: distinct seeds give distinct pixels and (almost surely) distinct average hashes."""
    channels = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * channels))


def save(folder: Path, name: str, image: Image.Image, **kw: Any) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, **kw)
    return f"{folder.name}/{name}", str(folder / name)


def write(folder: Path, name: str, data: bytes) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return f"{folder.name}/{name}", str(folder / name)


def good_set(root: Path, n: int = 6, offset: int = 0) -> list[tuple[str, str]]:
    return [save(root, f"ok{i}.png", noise(offset + i)) for i in range(n)]


def run_images(images: dict[str, list[tuple[str, str]]]) -> dict[str, Finding]:
    ctx = DoctorContext(splits={}, labels=[], images=images)
    found: dict[str, Finding] = {}
    for name in IMAGE_CHECKS:
        result = CHECKS[name][1](ctx)
        for f in result if isinstance(result, list) else ([result] if result else []):
            found[f.check] = f
    return found


def test_checks_are_registered_and_skip_without_images() -> None:
    assert {"image-unreadable", "image-not-an-image", "image-tiny", "image-mixed-modes",
            "image-split-duplicate", "image-split-near-duplicate"} <= set(IMAGE_CHECKS)
    assert run_images({}) == {} and run_images({"train": []}) == {}


def test_valid_images_give_no_findings(tmp_path: Path) -> None:
    found = run_images({"train": good_set(tmp_path / "train"), "validation": good_set(tmp_path / "val", 4, 100)})
    assert found == {}


def test_corrupt_truncated_and_missing_files_are_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    good = good_set(folder)
    jpeg = Path(save(folder, "full.jpg", noise(1, (64, 64)), quality=90)[1]).read_bytes()
    truncated = write(folder, "cut.jpg", jpeg[: len(jpeg) // 2])
    broken_png = write(folder, "bad.png", (folder / "ok0.png").read_bytes()[:60] + b"\x07" * 200)
    fake_jpeg = write(folder, "junk.jpg", b"\xff\xd8\xff" + b"\x13" * 100)
    missing = ("train/gone.jpg", str(folder / "gone.jpg"))
    found = run_images({"train": good + [truncated, broken_png, fake_jpeg, missing]})
    f = found["image-unreadable"]
    assert f.severity == "error" and f.count == 4
    by_loc = {e.split(": ", 1)[0]: e.split(": ", 1)[1] for e in f.examples}
    assert set(by_loc) == {"train/cut.jpg", "train/bad.png", "train/junk.jpg", "train/gone.jpg"}
    assert by_loc["train/cut.jpg"].startswith("corrupt:")
    assert "looks like a JPEG image" in by_loc["train/junk.jpg"]
    assert by_loc["train/gone.jpg"].startswith("cannot read the file")
    assert "image-not-an-image" not in found


def test_files_that_are_not_images_name_their_type(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    bad = [write(folder, "doc.jpg", b"%PDF-1.7\n%binary"), write(folder, "page.png", b"<!DOCTYPE html><html>"),
           write(folder, "lfs.jpg", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n"),
           write(folder, "empty.jpg", b""), write(folder, "notes.jpg", b"just some notes")]
    f = run_images({"train": good_set(folder) + bad})["image-not-an-image"]
    assert f.severity == "error" and f.count == 5
    assert f.examples == ["train/doc.jpg: PDF document", "train/page.png: HTML page",
                          "train/lfs.jpg: Git LFS pointer (run `git lfs pull`)", "train/empty.jpg: empty file",
                          "train/notes.jpg: text"]


def test_sniff_signatures() -> None:
    assert sniff(b"PK\x03\x04rest") == "ZIP archive"
    assert sniff(b"\x00\x00\x00\x18ftypheic") == "HEIC image"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8") == "WebP image"
    assert sniff(b"\x80\x81\xfe") == "unknown binary data"


def test_tiny_images_are_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    tiny = [save(folder, "thin.png", noise(50, (16, 300))), save(folder, "icon.png", noise(51, (31, 31)))]
    f = run_images({"train": good_set(folder) + tiny + [save(folder, "edge.png", noise(52, (32, 32)))]})["image-tiny"]
    assert f.severity == "warning" and f.count == 2
    assert f.examples == ["train/thin.png: 16x300", "train/icon.png: 31x31"]


def test_mixed_modes_name_the_odd_images(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    odd = [save(folder, "gray.png", noise(60, mode="L")), save(folder, "alpha.png", noise(61, mode="RGBA")),
           save(folder, "alpha2.png", noise(62, mode="RGBA")),
           save(folder, "pal.gif", noise(63).convert("P"))]
    f = run_images({"train": good_set(folder) + odd})["image-mixed-modes"]
    assert f.severity == "warning" and f.count == 4
    assert f.details["modes"] == {"RGB": 6, "L": 1, "RGBA": 2, "P": 1}
    assert f.details["formats"] == {"PNG": 9, "GIF": 1}
    assert "RGB 6, RGBA 2" in f.message
    assert "train/pal.gif: mode P (GIF, 40x40)" in f.examples


def test_same_image_in_two_splits_is_an_error_naming_both(tmp_path: Path) -> None:
    picture = noise(70, (48, 48))
    train = good_set(tmp_path / "train") + [save(tmp_path / "train", "cat.png", picture)]
    val = good_set(tmp_path / "val", 3, 100) + [save(tmp_path / "val", "cat_copy.bmp", picture)]
    found = run_images({"train": train, "validation": val})
    f = found["image-split-duplicate"]
    assert f.severity == "error" and f.count == 1
    assert f.examples == ["train/cat.png (train) = val/cat_copy.bmp (validation)"]
    assert "image-split-near-duplicate" not in found
    # duplicates inside one split are not this check's business
    assert "image-split-duplicate" not in run_images({"train": train + [save(tmp_path / "train", "c2.png", picture)]})


def test_resized_copy_across_splits_is_a_near_duplicate_warning(tmp_path: Path) -> None:
    picture = noise(80, (8, 8)).resize((64, 64), Image.Resampling.NEAREST)  # blocky: survives resizing
    train = good_set(tmp_path / "train") + [save(tmp_path / "train", "big.png", picture)]
    test = [save(tmp_path / "test", "small.jpg", picture.resize((48, 48)), quality=95)]
    found = run_images({"train": train, "test": test})
    f = found["image-split-near-duplicate"]
    assert f.severity == "warning" and f.count == 1
    assert f.examples == ["train/big.png (train) = test/small.jpg (test)"]
    assert "image-split-duplicate" not in found


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="shared hymenoptera images not present")
def test_hymenoptera_placeholder_gif_is_reported() -> None:
    """imageNotFound.gif decodes fine at 300x300, but it is the only palette (P) GIF among RGB JPEG photos."""
    train = HYMENOPTERA / "train"
    images = {"train": [(str(p.relative_to(HYMENOPTERA)), str(p)) for p in sorted(train.rglob("*")) if p.is_file()]}
    found = run_images(images)
    f = found["image-mixed-modes"]
    assert any(e.startswith("train/ants/imageNotFound.gif: mode P (GIF") for e in f.examples)
    assert f.details["formats"]["GIF"] == 1
    assert "image-unreadable" not in found and "image-not-an-image" not in found

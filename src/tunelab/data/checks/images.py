"""Doctor checks for image data (`ctx.images`: split -> [(location, path)]), using Pillow.

A broken or misnamed file found at step 500 of training costs the run; found here it costs a second.
Every image is decoded once (streaming: only a few numbers and hashes are kept per file), and the
scan is shared by all image checks, which then only look at its small per-file summaries.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, UnidentifiedImageError

from tunelab.data.findings import SPLIT_ORDER, DoctorContext, Finding, register_check, sample

MIN_SIDE = 32  # below this most vision backbones upscale pure noise (ImageNet models expect 224)
IMAGE_KINDS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WebP", "HEIC", "AVIF")

# (offset, magic bytes, what the file is)
_SIGNATURES: list[tuple[int, bytes, str]] = [
    (0, b"\xff\xd8\xff", "JPEG image"), (0, b"\x89PNG\r\n\x1a\n", "PNG image"), (0, b"GIF8", "GIF image"),
    (0, b"II*\x00", "TIFF image"), (0, b"MM\x00*", "TIFF image"), (8, b"WEBP", "WebP image"),
    (4, b"ftypheic", "HEIC image"), (4, b"ftypheix", "HEIC image"), (4, b"ftypmif1", "HEIC image"),
    (4, b"ftypavif", "AVIF image"), (4, b"ftypmp4", "MP4 video"), (4, b"ftypisom", "MP4 video"),
    (0, b"%PDF", "PDF document"), (0, b"PK\x03\x04", "ZIP archive"), (0, b"\x1f\x8b", "gzip archive"),
    (0, b"7z\xbc\xaf", "7-Zip archive"), (0, b"\x7fELF", "ELF executable"), (0, b"RIFF", "RIFF file (audio/video)"),
    (0, b"\x00\x00\x00", "binary data"), (0, b"BM", "BMP image"),
]
_TEXT_HINTS: list[tuple[str, str]] = [
    ("version https://git-lfs", "Git LFS pointer (run `git lfs pull`)"), ("<svg", "SVG drawing"),
    ("<?xml", "XML/SVG text"), ("<!doctype html", "HTML page"), ("<html", "HTML page"), ("{", "JSON text"),
    ("[", "JSON text"),
]


@dataclass(frozen=True)
class ImageInfo:
    """What the checks need to know about one file, so nothing decoded is held after its scan."""

    split: str
    location: str
    problem: str | None = None  # "unreadable" | "not-an-image"; None for a good image
    reason: str = ""
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    pixels: str = ""  # sha1 of mode, size and decoded pixels: equal for the same image in any container
    ahash: int = 0  # 64-bit average hash of an 8x8 grayscale thumbnail: equal for resized/re-encoded copies


def sniff(head: bytes) -> str:
    """What the first bytes of a file say it is; used to explain a file Pillow cannot open."""
    if not head:
        return "empty file"
    for offset, magic, kind in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return kind
    try:
        text = head.decode("utf-8").lstrip().lower()
    except UnicodeDecodeError:
        return "unknown binary data"
    return next((kind for prefix, kind in _TEXT_HINTS if text.startswith(prefix)), "text")


def _average_hash(im: Image.Image) -> int:
    base = im if im.mode in ("L", "RGB") else im.convert("RGB")
    small = list(base.resize((8, 8), Image.Resampling.BOX).convert("L").getdata())
    mean = sum(small) / 64
    return sum(1 << i for i, p in enumerate(small) if p > mean)


def inspect_image(split: str, location: str, path: str) -> ImageInfo:
    """Open, verify, then fully decode PATH (verify alone misses truncated JPEG data)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as err:
        return ImageInfo(split, location, "unreadable", f"cannot read the file ({err.strerror or err})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and decompression-bomb warnings are not our findings
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                im.load()
                digest = hashlib.sha1(f"{im.mode}{im.size}".encode())
                digest.update(im.tobytes())
                return ImageInfo(split, location, None, "", im.format, im.mode, im.width, im.height,
                                 digest.hexdigest(), _average_hash(im))
    except UnidentifiedImageError:
        kind = sniff(head)
        if kind.split()[0] in IMAGE_KINDS:
            return ImageInfo(split, location, "unreadable",
                             f"looks like a {kind} but Pillow cannot decode it (corrupt, or needs a plugin)")
        return ImageInfo(split, location, "not-an-image", kind)
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error...
        return ImageInfo(split, location, "unreadable", f"corrupt: {type(err).__name__}: {err}")


@lru_cache(maxsize=2)
def _scan_cached(key: tuple[tuple[str, str, str, int, int], ...]) -> tuple[ImageInfo, ...]:
    return tuple(inspect_image(split, loc, path) for split, loc, path, _, _ in key)


def scan(ctx: DoctorContext) -> tuple[ImageInfo, ...] | None:
    """Every image's summary; cached on (paths, sizes, mtimes) so the checks share one decoding pass."""
    if not any(ctx.images.values()):
        return None
    key = []
    for split, items in ctx.images.items():
        for loc, path in items:
            try:
                st = os.stat(path)
                key.append((split, loc, str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                key.append((split, loc, str(path), -1, -1))
    return _scan_cached(tuple(key))


@register_check("image-unreadable", "error")
def unreadable(ctx: DoctorContext) -> Finding | None:
    hits = [i for i in scan(ctx) or () if i.problem == "unreadable"]
    bad = [f"{i.location}: {i.reason}" for i in hits]
    if not bad:
        return None
    return Finding("image-unreadable", "error", f"{len(bad)} image file(s) are missing, corrupt or truncated",
                   len(bad), "re-export or re-download these files, or remove them from the data", sample(bad),
                   locations=[i.location for i in hits])


@register_check("image-not-an-image", "error")
def not_an_image(ctx: DoctorContext) -> Finding | None:
    hits = [i for i in scan(ctx) or () if i.problem == "not-an-image"]
    bad = [f"{i.location}: {i.reason}" for i in hits]
    if not bad:
        return None
    return Finding("image-not-an-image", "error", f"{len(bad)} file(s) are not images", len(bad),
                   "remove these files from the image folders (or fetch the real images they stand for)",
                   sample(bad), locations=[i.location for i in hits])


@register_check("image-tiny", "warning")
def tiny(ctx: DoctorContext) -> Finding | None:
    hits = [i for i in scan(ctx) or () if i.problem is None and min(i.width, i.height) < MIN_SIDE]
    bad = [f"{i.location}: {i.width}x{i.height}" for i in hits]
    if not bad:
        return None
    return Finding("image-tiny", "warning", f"{len(bad)} image(s) have a side under {MIN_SIDE} px", len(bad),
                   "check these are real examples (icons and thumbnails often are not); upscaling adds no detail",
                   sample(bad), locations=[i.location for i in hits])


@register_check("image-mixed-modes", "warning")
def mixed_modes(ctx: DoctorContext) -> Finding | None:
    """Mixed modes are converted silently, but RGBA loses its transparency to black and a lone
    palette (P) or grayscale file in a photo set is often a placeholder or a scan; so name the odd ones."""
    good = [i for i in scan(ctx) or () if i.problem is None]
    modes = Counter(i.mode for i in good)
    if len(modes) < 2:
        return None
    common = modes.most_common(1)[0][0]
    odd_images = [i for i in good if i.mode != common]
    odd = [f"{i.location}: mode {i.mode} ({i.format}, {i.width}x{i.height})" for i in odd_images]
    summary = ", ".join(f"{m} {n}" for m, n in modes.most_common())
    return Finding("image-mixed-modes", "warning", f"images have mixed colour modes ({summary}); "
                   f"{len(odd)} differ from the usual {common}", len(odd),
                   f"look at the odd ones (placeholders? scans?), then convert all images to {common}",
                   sample(odd), details={"modes": dict(modes), "formats": dict(Counter(i.format for i in good))},
                   locations=[i.location for i in odd_images])


def _cross_split_groups(good: list[ImageInfo], key: str) -> list[list[ImageInfo]]:
    groups: dict[object, list[ImageInfo]] = defaultdict(list)
    for info in good:
        groups[getattr(info, key)].append(info)
    return [g for g in groups.values() if len({i.split for i in g}) > 1]


def _describe(group: list[ImageInfo]) -> str:
    return " = ".join(f"{i.location} ({i.split})" for i in group)


def _copies(groups: list[list[ImageInfo]]) -> list[str]:
    """Every image of GROUPS outside the group's earliest split: the copies the fix removes."""
    rank = lambda split: SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    out = []
    for group in groups:
        first = min((i.split for i in group), key=rank)
        out += [i.location for i in group if i.split != first]
    return out


@register_check("image-split-duplicate", "error")
def split_duplicate(ctx: DoctorContext) -> Finding | None:
    """The same pixels in train and in an evaluation split make the evaluation score partly a memory test."""
    groups = _cross_split_groups([i for i in scan(ctx) or () if i.problem is None], "pixels")
    if not groups:
        return None
    return Finding("image-split-duplicate", "error", f"{len(groups)} image(s) occur in more than one split",
                   len(groups), "keep each image in one split only (remove the copies from validation/test)",
                   sample([_describe(g) for g in groups]),
                   details={"copies": sum(len(g) for g in groups)}, locations=_copies(groups))


@register_check("image-split-near-duplicate", "warning")
def split_near_duplicate(ctx: DoctorContext) -> Finding | None:
    """Resized or re-encoded copies differ in pixels but share the 8x8 average hash. Uniform images all
    hash to 0, so that hash is skipped; a shared hash can still be chance, hence a warning."""
    good = [i for i in scan(ctx) or () if i.problem is None and i.ahash != 0]
    groups = [g for g in _cross_split_groups(good, "ahash") if len({i.pixels for i in g}) > 1]
    if not groups:
        return None
    return Finding("image-split-near-duplicate", "warning",
                   f"{len(groups)} image(s) look alike across splits (same average hash, different pixels)",
                   len(groups), "look at them; if they are the same picture, keep it in one split only",
                   sample([_describe(g) for g in groups]), locations=_copies(groups))

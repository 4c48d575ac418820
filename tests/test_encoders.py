"""Observation encoders: shapes, uint8 handling, random shift, gradients, determinism, bad specs and weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from safetensors.torch import save_file

from calql_robot.encoders import build_encoder
from calql_robot.encoders.augment import augment_batch, random_shift, sample_shifts, shift_images
from calql_robot.encoders.conv import conv_output_side
from calql_robot.encoders.flops import count_flops
from calql_robot.errors import UserError


def rgb(h: int = 64, w: int = 64, c: int = 3) -> dict:
    return {"shape": [h, w, c], "dtype": "uint8", "kind": "rgb"}


def low_dim(n: int) -> dict:
    return {"shape": [n], "dtype": "float32", "kind": "low_dim"}


def random_obs(spec: dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = {}
    for key, entry in spec.items():
        if entry["kind"] == "rgb":
            obs[key] = torch.randint(0, 256, (batch, *entry["shape"]), generator=gen, dtype=torch.uint8)
        else:
            obs[key] = torch.randn(batch, *entry["shape"], generator=gen)
    return obs


def test_low_dim_only_concatenates_sorted_keys():
    spec = {"z_obj": low_dim(3), "a_qpos": low_dim(2), "m": {"shape": [2, 2], "dtype": "float32", "kind": "low_dim"}}
    enc = build_encoder(OmegaConf.create({"name": "auto"}), spec)
    obs = random_obs(spec, 5)
    out = enc(obs, augment=True)
    assert enc.out_dim == 9 and out.shape == (5, 9) and out.dtype == torch.float32
    expected = torch.cat([obs["a_qpos"], obs["m"].reshape(5, 4), obs["z_obj"]], dim=-1)
    assert torch.equal(out, expected)


def test_one_camera_conv_shape_and_range():
    spec = {"agentview_rgb": rgb()}
    enc = build_encoder({"feature_dim": 40}, spec)
    out = enc(random_obs(spec, 3))
    assert enc.out_dim == 40 and out.shape == (3, 40) and out.dtype == torch.float32
    assert out.abs().max() <= 1.0  # LayerNorm + tanh
    assert enc.cameras["agentview_rgb"].trunk.out_shape == (32, 25, 25)


@pytest.mark.parametrize("share", [False, True])
def test_two_cameras_and_proprio(share):
    spec = {"wrist_rgb": rgb(), "agentview_rgb": rgb(), "eef": low_dim(3), "gripper": low_dim(2)}
    enc = build_encoder({"share_cameras": share, "proprio_hidden": [16], "feature_dim": 32}, spec)
    obs = random_obs(spec, 4)
    out = enc(obs)
    assert enc.out_dim == 2 * 32 + 16 and out.shape == (4, 80)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules())
    assert n_conv == (4 if share else 8)
    # Camera features come in sorted key order: changing only the wrist image changes only the second block.
    obs2 = dict(obs, wrist_rgb=torch.flip(obs["wrist_rgb"], dims=[1]))
    out2 = enc(obs2)
    assert torch.equal(out[:, :32], out2[:, :32]) and not torch.equal(out[:, 32:64], out2[:, 32:64])
    assert torch.equal(out[:, 64:], out2[:, 64:])


def test_proprio_without_mlp_is_passed_through():
    spec = {"cam": rgb(), "b": low_dim(2), "a": low_dim(3)}
    enc = build_encoder({"feature_dim": 8}, spec)
    obs = random_obs(spec, 2)
    out = enc(obs)
    assert out.shape == (2, 13)
    assert torch.equal(out[:, 8:], torch.cat([obs["a"], obs["b"]], dim=-1))


def test_resnet18_at_64():
    spec = {"cam": rgb(), "q": low_dim(4)}
    enc = build_encoder({"name": "resnet18", "feature_dim": 64}, spec)
    out = enc(random_obs(spec, 2), augment=True)
    assert enc.out_dim == 68 and out.shape == (2, 68) and torch.isfinite(out).all()
    norms = {type(m).__name__ for m in enc.modules()}
    assert "GroupNorm" in norms and "BatchNorm2d" not in norms


def test_resnet18_grey_and_resize():
    spec = {"cam": rgb(32, 48, 1)}
    enc = build_encoder({"name": "resnet18", "resnet_resize": 64, "resnet_norm": "frozen_batch"}, spec)
    camera = enc.cameras["cam"]
    x = camera.preprocess(random_obs(spec, 2)["cam"])
    assert x.shape == (2, 3, 64, 64)
    assert enc(random_obs(spec, 2)).shape == (2, 50)


def test_uint8_hwc_is_converted_and_normalised():
    spec = {"cam": rgb(16, 20)}
    camera = build_encoder(None, spec).cameras["cam"]
    images = torch.zeros(2, 16, 20, 3, dtype=torch.uint8)
    images[0, 3, 5, 1] = 255
    x = camera.preprocess(images)
    assert x.shape == (2, 3, 16, 20) and x.dtype == torch.float32
    assert x[0, 1, 3, 5] == pytest.approx(0.5) and x[0, 0, 3, 5] == pytest.approx(-0.5)
    assert x.min() == pytest.approx(-0.5)


def test_wrong_runtime_tensor_raises_naming_key():
    spec = {"front_rgb": rgb()}
    enc = build_encoder(None, spec)
    chw = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(UserError, match="front_rgb"):
        enc({"front_rgb": chw})
    with pytest.raises(UserError, match="uint8"):
        enc({"front_rgb": torch.zeros(2, 64, 64, 3)})


def test_augment_changes_images_and_is_identity_when_off():
    spec = {"cam": rgb()}
    enc = build_encoder(None, spec)
    obs = random_obs(spec, 8)
    assert enc.augment_pads == {"cam": 4}
    base = enc(obs, augment=False)
    assert torch.equal(base, enc(obs, augment=False))
    torch.manual_seed(1)
    assert not torch.allclose(base, enc(obs, augment=True))
    shifted = random_shift(obs["cam"], 4, torch.Generator().manual_seed(3))
    assert shifted.shape == obs["cam"].shape and shifted.dtype == torch.uint8
    assert not torch.equal(shifted, obs["cam"])
    assert torch.equal(random_shift(obs["cam"], 0), obs["cam"])
    out = augment_batch({"cam": obs["cam"], "q": torch.ones(8, 2)}, {"cam": 4}, torch.Generator().manual_seed(3))
    assert torch.equal(out["cam"], shifted) and torch.equal(out["q"], torch.ones(8, 2))


def test_random_shift_is_a_crop_of_the_padded_image():
    pad = 4
    images = torch.randint(0, 256, (16, 24, 20, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    shifts = sample_shifts(16, pad, torch.Generator().manual_seed(5))
    assert shifts.min() >= 0 and shifts.max() <= 2 * pad and len(set(map(tuple, shifts.tolist()))) > 1
    shifted = shift_images(images, shifts, pad)
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        crop = padded[i, dy:dy + 24, dx:dx + 20].to(torch.uint8)
        assert torch.equal(shifted[i], crop)
    centre = torch.full((16, 2), pad)
    assert torch.equal(shift_images(images, centre, pad), images)


def test_default_pad_scales_with_image_size():
    enc = build_encoder(None, {"a": rgb(84, 84), "b": rgb(128, 128), "c": rgb(32, 32)})
    assert enc.augment_pads == {"a": 5, "b": 8, "c": 2}
    assert build_encoder({"augment_pad": 0}, {"a": rgb()}).augment_pads == {"a": 0}


@pytest.mark.parametrize("name", ["conv", "resnet18"])
def test_gradient_reaches_first_conv(name):
    spec = {"cam": rgb(), "q": low_dim(3)}
    enc = build_encoder({"name": name, "proprio_hidden": [8]}, spec)
    enc(random_obs(spec, 2), augment=True).pow(2).sum().backward()
    first_conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_deterministic_with_seed():
    spec = {"cam": rgb(), "q": low_dim(3)}
    obs = random_obs(spec, 4)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        enc = build_encoder({"proprio_hidden": [8]}, spec)
        outs.append(enc(obs, augment=True))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    assert not torch.equal(outs[0], build_encoder({"proprio_hidden": [8]}, spec)(obs, augment=True))


@pytest.mark.parametrize("entry, words", [
    ({"shape": [64, 64], "dtype": "uint8", "kind": "rgb"}, "(H, W, C)"),
    ({"shape": [64, 64, 4], "dtype": "uint8", "kind": "rgb"}, "(H, W, C)"),
    ({"shape": [64, 64, 3], "dtype": "float32", "kind": "rgb"}, "uint8"),
    ({"shape": [8, 8, 3], "dtype": "uint8", "kind": "rgb"}, "at least"),
    ({"shape": [3], "dtype": "float32", "kind": "depth"}, "kind"),
])
def test_bad_obs_spec_names_key(entry, words):
    with pytest.raises(UserError, match="bad_cam") as info:
        build_encoder(None, {"bad_cam": entry, "q": low_dim(2)})
    assert words in str(info.value)


@pytest.mark.parametrize("cfg, words", [
    ({"name": "vit"}, "encoder.name"),
    ({"feature_dim": 0}, "feature_dim"),
    ({"featuredim": 10}, "unknown key"),
    ({"resnet_norm": "layer"}, "resnet_norm"),
    ({"name": "low_dim"}, "cam"),
])
def test_bad_config_raises(cfg, words):
    with pytest.raises(UserError, match=words):
        build_encoder(cfg, {"cam": rgb()})


def test_image_encoder_on_low_dim_spec_raises():
    with pytest.raises(UserError, match="needs at least one rgb"):
        build_encoder({"name": "conv"}, {"q": low_dim(2)})


def test_share_cameras_needs_equal_shapes():
    with pytest.raises(UserError, match="share_cameras"):
        build_encoder({"share_cameras": True}, {"a": rgb(64, 64), "b": rgb(84, 84)})


def test_resnet_weights_missing_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors"):
        build_encoder({"name": "resnet18", "resnet_weights": str(missing)}, {"cam": rgb()})


def test_resnet_weights_load_from_safetensors_and_pth(tmp_path):
    torch.manual_seed(7)
    reference = torchvision.models.resnet18(weights=None)  # BatchNorm, with fc, like a torchvision file
    st_path, pth_path = tmp_path / "r18.safetensors", tmp_path / "r18.pth"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(st_path))
    torch.save(state, pth_path)
    for path in (st_path, pth_path):
        enc = build_encoder({"name": "resnet18", "resnet_norm": "frozen_batch", "resnet_weights": str(path)},
                            {"cam": rgb()})
        loaded = enc.cameras["cam"].trunk.net
        assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
        assert torch.equal(loaded.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    # GroupNorm has no running statistics: the same file does not match, and the message says what to do.
    with pytest.raises(UserError, match="frozen_batch") as info:
        build_encoder({"name": "resnet18", "resnet_weights": str(st_path)}, {"cam": rgb()})
    assert "r18.safetensors" in str(info.value) and "running_mean" in str(info.value)
    # A file missing a layer is rejected, naming a missing key.
    save_file({k: v for k, v in state.items() if not k.startswith("layer1.")}, str(tmp_path / "part.safetensors"))
    with pytest.raises(UserError, match="layer1"):
        build_encoder({"name": "resnet18", "resnet_norm": "frozen_batch",
                       "resnet_weights": str(tmp_path / "part.safetensors")}, {"cam": rgb()})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        build_encoder({"name": "resnet18", "resnet_weights": str(tmp_path / "junk.pth")}, {"cam": rgb()})


def test_conv_flops_match_formula():
    spec = {"cam": rgb()}
    enc = build_encoder({"feature_dim": 50}, spec)
    flops = count_flops(enc, lambda: enc(random_obs(spec, 1)))
    sides = [31, 29, 27, 25]
    assert conv_output_side(64, 4) == 25
    conv = 2 * 3 * 9 * 32 * 31 ** 2 + sum(2 * 32 * 9 * 32 * s ** 2 for s in sides[1:])
    conv += 32 * sum(s ** 2 for s in sides)  # biases
    linear = 50 * (2 * 32 * 25 * 25 + 1)
    assert flops == conv + linear


def test_channels_last_conv_matches_plain_conv_and_state_dict_saves(tmp_path):
    spec = {"cam": rgb(), "q": low_dim(2)}
    for name in ("conv", "resnet18"):
        enc = build_encoder({"name": name}, spec)
        save_file(enc.state_dict(), str(tmp_path / f"{name}.safetensors"))  # needs contiguous tensors
        assert all(not k.endswith(("scale", "shift")) for k in enc.state_dict())
    conv = build_encoder(None, spec).cameras["cam"].trunk.net[0]
    x = torch.randn(2, 3, 20, 20).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv(x), F.conv2d(x.contiguous(), conv.weight, conv.bias, stride=2), atol=1e-5)


@pytest.mark.parametrize("name", ["auto", "conv", "resnet18", "resnet18_pretrained"])
def test_encoder_config_files(name):
    cfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "encoder" / f"{name}.yaml")
    spec = {"cam": rgb(), "q": low_dim(3)}
    if name == "resnet18_pretrained":
        with pytest.raises(UserError, match="resnet_weights"):
            build_encoder(cfg, spec)
        return
    enc = build_encoder(cfg, spec)
    assert enc.out_dim == cfg.feature_dim + 3
    assert any(type(m).__name__ == "GroupNorm" for m in enc.modules()) == (name == "resnet18")


def test_conv_stride2_layers_shrinks_the_feature_map() -> None:
    assert conv_output_side(64, 4, 2) == 11 and conv_output_side(64, 4, 0) == 56
    spec = {"cam": {"shape": [64, 64, 3], "dtype": "uint8", "kind": "rgb"}}
    encoder = build_encoder({"name": "conv", "conv_stride2_layers": 2, "feature_dim": 8}, spec)
    assert encoder.cameras["cam"].trunk.out_dim == 32 * 11 * 11
    out = encoder({"cam": torch.zeros(2, 64, 64, 3, dtype=torch.uint8)})
    assert out.shape == (2, 8)
    with pytest.raises(UserError, match="conv_stride2_layers"):
        build_encoder({"name": "conv", "conv_stride2_layers": 5}, spec)

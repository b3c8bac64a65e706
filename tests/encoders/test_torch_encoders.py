"""torch/timm encoders: every built-in architecture round-trips weights a test saves, the
truncated ResNet50 equals a hand-built one, and bad weights fail with the keys named."""

from __future__ import annotations

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from wsimm.encoders import SPECS, TorchEncoder, create_encoder, list_encoders  # noqa: E402
from wsimm.encoders._torch import _create  # noqa: E402
from wsimm.errors import ConfigError  # noqa: E402


def _tiles(n: int = 2, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _filled(name: str):
    """The built-in architecture with seeded random weights, built without timm's (slow)
    initialisation: meta tensors, then every parameter drawn from N(0, 0.02)."""
    import timm

    spec = SPECS[name]
    kwargs = dict(spec.kwargs)
    kwargs.setdefault("num_classes", 0)
    model = _create(timm, spec.arch, kwargs, pretrained=False, meta=True).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


#: parameter counts the model cards and papers publish (UNI: ViT-L/16, 303M; UNI2-h: ViT-H/14
#: with 8 register tokens, 681M; Virchow and Virchow2: ViT-H/14, 632M; Prov-GigaPath tile
#: encoder: ViT-g, 1.13B; H-optimus-0: ViT-g/14, 1.1B), the tokens each puts out for a 224 px
#: tile (class + registers + patches) and the width of its embedding
PUBLISHED = {
    "uni": (303e6, 1 + 196, 1024),
    "uni2-h": (681e6, 1 + 8 + 256, 1536),
    "virchow": (632e6, 1 + 256, 2560),
    "virchow2": (632e6, 1 + 4 + 256, 2560),
    "prov-gigapath": (1.13e9, 1 + 196, 1536),
    "h-optimus-0": (1.1e9, 1 + 4 + 256, 1536),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_foundation_model_architectures_match_the_published_checkpoints(name):
    """Built on the meta device (no memory, no weights): the parameter count within the
    rounding of the published figure, the token layout and the embedding width."""
    import timm

    spec = SPECS[name]
    kwargs = dict(spec.kwargs)
    kwargs.setdefault("num_classes", 0)
    model = _create(timm, spec.arch, kwargs, pretrained=False, meta=True)
    n_params, n_tokens, dim = PUBLISHED[name]
    count = sum(p.numel() for p in model.parameters())
    # within half a unit of the published figure's last digit (1.1B: 0.05B), or 0.5% for the
    # three-digit figures (checkpoints differ by a norm layer or so from timm's count)
    tol = 0.05e9 if name == "h-optimus-0" else 0.005 * n_params
    assert abs(count - n_params) <= tol, count
    with torch.no_grad():
        tokens = model.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert tuple(tokens.shape[:2]) == (1, n_tokens)
    assert spec.embed_dim == dim == tokens.shape[2] * (2 if spec.pooling == "cls+mean" else 1)
    assert not any(k.startswith("head.") and v.numel() for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "name",
    [
        "uni",  # the smallest: the real load path in every run
        *(
            pytest.param(n, marks=pytest.mark.slow)
            for n in ("uni2-h", "virchow", "virchow2", "prov-gigapath", "h-optimus-0")
        ),
    ],
)
def test_foundation_model_weights_round_trip_exactly(name, tmp_path):
    from safetensors.torch import save_file

    model = _filled(name)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = create_encoder(name, weights=str(path), device="cpu")
    assert enc.cfg.embed_dim == SPECS[name].embed_dim
    x = _tiles(1)
    ref = TorchEncoder(model, enc.cfg, device="cpu", fingerprint=None).encode(x)
    out = enc.encode(x)
    assert out.shape == (1, SPECS[name].embed_dim)
    np.testing.assert_array_equal(out, ref)
    assert enc.weights_fingerprint.startswith("sha1:")
    del model, enc
    path.unlink()
    gc.collect()


@pytest.mark.slow
def test_virchow_pools_class_and_mean_patch_tokens(tmp_path):
    from safetensors.torch import save_file

    model = _filled("virchow2")
    path = tmp_path / "v2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = create_encoder("virchow2", weights=str(path), device="cpu")
    x = enc.preprocess(_tiles(1))
    with torch.inference_mode():
        tokens = model.forward_features(x)
    assert model.num_prefix_tokens == 5  # class token + 4 registers
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1).numpy()
    np.testing.assert_allclose(enc.forward(x).numpy(), want, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A full timm ResNet50 (layer4 and fc included) saved as a wrapped, prefixed .pth."""
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet50", pretrained=False).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in full.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    sd = {f"module.{k}": v for k, v in full.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return full, path


def test_resnet50_trunc_equals_hand_built_truncation(resnet50_file):
    full, path = resnet50_file
    enc = create_encoder("resnet50_trunc", weights=str(path), device="cpu")
    assert enc.cfg.embed_dim == 1024
    x = enc.preprocess(_tiles(3))
    with torch.inference_mode():
        h = full.maxpool(full.act1(full.bn1(full.conv1(x))))
        h = full.layer3(full.layer2(full.layer1(h)))
        want = h.mean(dim=(2, 3))
    got = enc.forward(x)
    assert float((got - want).abs().max()) < 1e-5


def test_wrong_weights_name_the_keys(tmp_path, resnet50_file):
    import timm

    r18 = timm.create_model("resnet18", pretrained=False, num_classes=0)
    p = tmp_path / "r18.pth"
    torch.save(r18.state_dict(), p)
    with pytest.raises(ConfigError) as e:
        create_encoder("resnet50_trunc", weights=str(p), device="cpu")
    msg = str(e.value)
    assert "r18.pth" in msg and "missing keys" in msg and "--weights" in msg
    assert "shape mismatches" in msg and "layer1.0.conv1.weight" in msg
    _, r50 = resnet50_file
    with pytest.raises(ConfigError, match=r"missing keys: .*blocks"):
        create_encoder("uni", weights=str(r50), device="cpu")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights"):
        create_encoder("resnet50_trunc", weights=str(junk), device="cpu")
    with pytest.raises(ConfigError, match="does not exist"):
        create_encoder("resnet50_trunc", weights=str(tmp_path / "nope.pth"), device="cpu")


@pytest.mark.parametrize("name", ["uni", "uni2-h", "virchow", "virchow2", "h-optimus-0"])
def test_gated_models_without_weights_say_where_to_get_them(name):
    with pytest.raises(ConfigError) as e:
        create_encoder(name, device="cpu")
    assert "huggingface.co/" in str(e.value) and "--weights" in str(e.value)


def test_any_timm_model_by_name(tmp_path):
    enc = create_encoder("timm:resnet18", weights="random", device="cpu")
    assert enc.cfg.embed_dim == 512
    assert enc.encode(_tiles(2, 256)).shape == (2, 512)  # other tile sizes are resized
    vit = create_encoder("timm:vit_tiny_patch16_224", weights="random", device="cpu")
    assert vit.encode(_tiles(1)).shape == (1, 192)
    with pytest.raises(ConfigError, match="did you mean timm:resnet50"):
        create_encoder("timm:resnet5O", device="cpu")
    with pytest.raises(ConfigError, match="did you mean"):
        create_encoder("resnet50_trunk")
    assert {"resnet50_trunc", "uni", "virchow2", "test_tiny"} <= set(list_encoders())


def test_state_dict_formats_load_the_same(tmp_path):
    from safetensors.torch import save_file

    enc = create_encoder("timm:resnet18", weights="random", device="cpu")
    sd = enc.model.state_dict()
    files = {
        "a.safetensors": None,
        "b.bin": {k: v for k, v in sd.items()},
        "c.pth": {"model": {f"backbone.{k}": v for k, v in sd.items()}},
    }
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "a.safetensors"))
    for name, obj in files.items():
        if obj is not None:
            torch.save(obj, tmp_path / name)
    x = _tiles(2)
    ref = enc.encode(x)
    for name in files:
        other = create_encoder("timm:resnet18", weights=str(tmp_path / name), device="cpu")
        np.testing.assert_array_equal(other.encode(x), ref)


@pytest.mark.parametrize("size", [224, 256])  # the model's input size, and one resized to it
def test_preprocess_normalises_with_the_encoders_mean_and_std(size):
    import torch.nn.functional as F

    enc = create_encoder("timm:resnet18", weights="random", device="cpu")
    t = _tiles(3, size, seed=4)
    x = torch.from_numpy(t).permute(0, 3, 1, 2).float() / 255.0
    if size != enc.cfg.input_size:
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(enc.cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.cfg.std).view(1, 3, 1, 1)
    got = enc.preprocess(t)
    assert got.shape == (3, 3, 224, 224) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, (x - mean) / std, rtol=0, atol=2e-5)

"""torch/timm encoders: ImageNet CNNs, any timm model, and the pathology foundation models.

Each built-in is defined by its exact timm architecture and kwargs, its published
normalisation, embedding size and token pooling (the table :data:`SPECS`). Weights come from
``--weights``:

- a local file (``.safetensors``, ``.bin``, ``.pth``; wrapped or prefixed state dicts are
  unwrapped, see :mod:`wsimm.encoders._weights`);
- ``hf-hub:org/name`` for users who are online (timm downloads it; gated models need
  ``huggingface-cli login`` and accepted terms);
- ``random`` for an untrained model (smoke tests, benchmarks);
- nothing: ImageNet models try timm's pretrained download, gated foundation models stop with
  a message that says where to get the weights and which flag to pass.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from wsimm.encoders._registry import EncoderCfg, register_encoder, register_prefix
from wsimm.errors import ConfigError, MissingDependencyError

__all__ = ["SPECS", "ModelSpec", "TorchEncoder", "build_model", "create_timm_encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one encoder: timm architecture + kwargs, preprocessing and pooling."""

    arch: str
    embed_dim: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    mpp: float | None = None
    precision: str = "fp32"
    pooling: str = "avg"  # avg | cls | cls+mean | (model's own head output)
    hub: str | None = None  # hf-hub repo with the published weights
    gated: bool = False
    truncate_after: str | None = None  # resnet stage to stop after (resnet50_trunc)
    note: str = ""


def _swiglu_silu() -> dict[str, Any]:
    import timm.layers
    import torch

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


# kwargs that need torch/timm classes ("_swiglu") are resolved lazily in _create
SPECS: dict[str, ModelSpec] = {
    "resnet50_trunc": ModelSpec(
        arch="resnet50",
        embed_dim=1024,
        hub="timm/resnet50.tv_in1k",
        truncate_after="layer3",
        note="ImageNet ResNet50 (torchvision weights) cut after layer 3 + average pooling: "
        "CLAM's default feature extractor",
    ),
    "uni": ModelSpec(
        arch="vit_large_patch16_224",
        embed_dim=1024,
        kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        hub="MahmoodLab/UNI",
        gated=True,
    ),
    "uni2-h": ModelSpec(
        arch="vit_giant_patch14_224",
        embed_dim=1536,
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            "_swiglu": True,
        },
        mpp=0.5,
        precision="bf16",
        pooling="cls",
        hub="MahmoodLab/UNI2-h",
        gated=True,
    ),
    "virchow": ModelSpec(
        arch="vit_huge_patch14_224",
        embed_dim=2560,
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            "_swiglu": True,
        },
        mpp=0.5,
        precision="fp16",
        pooling="cls+mean",
        hub="paige-ai/Virchow",
        gated=True,
        note="class token concatenated with the mean patch token",
    ),
    "prov-gigapath": ModelSpec(
        arch="vit_giant_patch14_dinov2",
        embed_dim=1536,
        kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        hub="prov-gigapath/prov-gigapath",
        gated=True,
        note="the tile encoder of Prov-GigaPath",
    ),
    "h-optimus-0": ModelSpec(
        arch="vit_giant_patch14_reg4_dinov2",
        embed_dim=1536,
        kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False, "num_classes": 0},
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        mpp=0.5,
        precision="fp16",
        pooling="cls",
        hub="bioptimus/H-optimus-0",
        gated=True,
    ),
}
# Virchow2 is Virchow's architecture with 4 register tokens (excluded from the mean)
SPECS["virchow2"] = replace(
    SPECS["virchow"],
    kwargs={**SPECS["virchow"].kwargs, "reg_tokens": 4},
    hub="paige-ai/Virchow2",
    note="class token concatenated with the mean patch token (registers excluded)",
)


def _require_timm() -> Any:
    try:
        import timm
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(e.name or "torch", "torch", "torch/timm encoders") from e
    return timm


def _truncated_resnet(resnet: Any, stage: str) -> Any:
    """A timm ResNet cut after ``stage``, with global average pooling. Its state dict keys
    are the ResNet's own (minus the dropped stages), so ResNet checkpoints load."""
    import torch

    stages = ["layer1", "layer2", "layer3", "layer4"]
    keep = stages[: stages.index(stage) + 1]

    class TruncatedResNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("conv1", "bn1", "act1", "maxpool", *keep):
                setattr(self, name, getattr(resnet, name))
            self.stages = keep

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
            for s in self.stages:
                x = getattr(self, s)(x)
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)

    return TruncatedResNet()


def _create(timm: Any, arch: str, kwargs: dict[str, Any], *, pretrained: bool, meta: bool) -> Any:
    import torch

    kw = dict(kwargs)
    if kw.pop("_swiglu", False):
        kw.update(_swiglu_silu())
    if meta:
        with torch.device("meta"):
            return timm.create_model(arch, pretrained=False, **kw)
    return timm.create_model(arch, pretrained=pretrained, **kw)


def _has_unsaved_buffers(model: Any) -> bool:
    saved = set(model.state_dict())
    return any(n not in saved for n, _ in model.named_buffers())


def _check_hub(name: str, repo: str) -> None:
    """Fail at once, in one line, when a hub model's weights are neither in the local
    Hugging Face cache nor reachable (huggingface_hub would retry for half a minute)."""
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import try_to_load_from_cache

        for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, f), str):
                return
    except ImportError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if not offline and host:
        try:
            socket.create_connection((host, 443), timeout=5).close()
            return
        except OSError:
            pass
    why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
    raise ConfigError(
        f"encoder {name!r} needs its weights from the Hugging Face hub ({repo}) and {why}: "
        "download them where you are online and pass --weights PATH (or --encoder test_tiny "
        "for a smoke run whose features mean nothing)"
    )


def build_model(name: str, spec: ModelSpec, weights: str | None) -> tuple[Any, str]:
    """``(model in eval mode on CPU, weights fingerprint)`` for a spec and a weights choice."""
    import torch

    from wsimm.encoders._weights import file_fingerprint, load_weights

    timm = _require_timm()
    kwargs = dict(spec.kwargs)
    if spec.truncate_after is None:
        kwargs.setdefault("num_classes", 0)
    ignore: tuple[str, ...] = ("layer4.", "fc.") if spec.truncate_after == "layer3" else ()

    def finish(model: Any) -> Any:
        if spec.truncate_after:
            model = _truncated_resnet(model, spec.truncate_after)
        return model.eval()

    if weights is None:
        if spec.gated:
            raise ConfigError(
                f"encoder {name!r} needs its weights, which are gated: accept the terms at "
                f"https://huggingface.co/{spec.hub}, download the weights file, and pass "
                f"--weights PATH (or --weights hf-hub:{spec.hub} when logged in with "
                "huggingface-cli)"
            )
        weights = f"hf-hub:{spec.hub}" if spec.hub else "timm-pretrained"
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _create(timm, spec.arch, kwargs, pretrained=False, meta=False)
        return finish(model), "random:0"
    if weights.startswith("hf-hub:") or weights == "timm-pretrained":
        arch = weights if weights.startswith("hf-hub:") else spec.arch
        if weights.startswith("hf-hub:"):
            _check_hub(name, weights[len("hf-hub:") :])
        try:
            model = _create(timm, arch, kwargs, pretrained=True, meta=False)
        except Exception as e:
            raise ConfigError(
                f"could not fetch weights {weights} for encoder {name!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); offline or gated? "
                "Download the weights and pass --weights PATH, or --weights random"
            ) from e
        return finish(model), weights
    # a local file: build without initialising (meta tensors) when every buffer is saved,
    # so a billion-parameter ViT does not spend seconds on an init its weights overwrite
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise ConfigError(
            f"weights file {path} does not exist; pass a local .safetensors/.bin/.pth file, "
            "hf-hub:ORG/NAME, or random"
        )
    model = _create(timm, spec.arch, kwargs, pretrained=False, meta=True)
    if _has_unsaved_buffers(model):
        model = _create(timm, spec.arch, kwargs, pretrained=False, meta=False)
    else:
        model = model.to_empty(device="cpu")
    model = finish(model)
    load_weights(model, path, name=name, ignore_unexpected=ignore)
    return model, file_fingerprint(path)


def _device(device: str) -> Any:
    import torch

    if device in ("auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown --device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA, but torch sees no GPU")
    return dev


class TorchEncoder:
    """A torch model behind the :class:`~wsimm.encoders.Encoder` protocol.

    ``encode`` takes ``(B, H, W, 3)`` uint8 tiles: pinned-memory, non-blocking transfer on
    CUDA, resize to the model's input size (bilinear, antialiased) on the device, normalise,
    channels-last, ``torch.inference_mode`` and autocast at the encoder's precision on CUDA
    (fp32 on CPU). One forward pass runs at a time per encoder (a lock): several tiling
    threads share one model without oversubscribing the cores or the GPU.
    """

    def __init__(
        self, model: Any, cfg: EncoderCfg, *, device: str = "auto", fingerprint: str | None
    ) -> None:
        import torch

        self.cfg = cfg
        self.weights_fingerprint = fingerprint
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda" or _is_cnn(model):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        # (x / 255 - mean) / std folded into one multiply-add on the uint8 -> float pass
        mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * std)).to(self.device)
        self._bias = (-mean / std).to(self.device)
        self._lock = threading.Lock()
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        self._amp = amp if self.device.type == "cuda" else None

    def preprocess(self, tiles: np.ndarray) -> Any:
        """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, S, S)`` on the device."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # a channels-last view: no copy
        s = self.cfg.input_size
        if s and x.shape[-2:] != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True,
                              align_corners=False)  # fmt: skip
        # one pass, uint8 (or resized float) in, normalised float32 out, channels-last kept
        # (2-4x faster on the CPU than dividing, subtracting and dividing in turn)
        x = torch.addcmul(self._bias, x, self._scale)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: Any) -> Any:
        """Normalised input -> ``(B, D)`` embeddings (float32, on the device)."""
        import torch

        amp = (
            torch.autocast("cuda", dtype=self._amp)
            if self._amp is not None
            else contextlib.nullcontext()
        )
        with self._lock, torch.inference_mode(), amp:
            if self.cfg.pooling == "cls+mean":
                t = self.model.forward_features(x)
                out = torch.cat([t[:, 0], t[:, self.prefix_tokens :].mean(1)], dim=1)
            else:
                out = self.model(x)
        return out.float()

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        if len(tiles) == 0:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        return self.forward(self.preprocess(tiles)).cpu().numpy()


def _is_cnn(model: Any) -> bool:
    return not hasattr(model, "blocks")


def create_timm_encoder(
    name: str, spec: ModelSpec, *, weights: str | None, device: str
) -> TorchEncoder:
    model, fp = build_model(name, spec, weights)
    if not spec.embed_dim:  # an hf-hub timm model: its config came with the download
        d = getattr(model, "pretrained_cfg", {}) or {}
        spec = replace(
            spec,
            embed_dim=int(model.num_features),
            mean=tuple(d.get("mean", spec.mean)),
            std=tuple(d.get("std", spec.std)),
            input_size=int(d.get("input_size", (3, spec.input_size, 0))[-1] or spec.input_size),
        )
    cfg = EncoderCfg(
        name=name,
        embed_dim=spec.embed_dim,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        mpp=spec.mpp,
        precision=spec.precision,
        pooling=spec.pooling,
        extra={
            "arch": spec.arch,
            "kwargs": _plain(spec.kwargs),
            "hub": spec.hub,
            "truncate_after": spec.truncate_after,
        },
    )
    return TorchEncoder(model, cfg, device=device, fingerprint=fp)


def _plain(kw: dict[str, Any]) -> dict[str, Any]:
    """JSON-able kwargs for the store's provenance."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in kw.items()}  # fmt: skip


def timm_spec(model_name: str) -> ModelSpec:
    """A spec for ``timm:<model_name>`` from timm's own pretrained config (``model_name``
    may be an ``hf-hub:org/name`` timm model; its config then comes with the download)."""
    timm = _require_timm()
    if model_name.startswith("hf-hub:"):
        return ModelSpec(arch=model_name, embed_dim=0, hub=model_name[len("hf-hub:") :])
    if not timm.is_model(model_name):
        import difflib

        close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ConfigError(f"timm has no model {model_name!r}{hint}")
    import torch

    with torch.device("meta"):  # the embedding size, without allocating the model
        dim = int(timm.create_model(model_name, pretrained=False, num_classes=0).num_features)
    cfg = timm.get_pretrained_cfg(model_name)
    d = cfg.to_dict() if cfg is not None else {}
    return ModelSpec(
        arch=model_name,
        embed_dim=dim,
        mean=tuple(d.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        input_size=int(d.get("input_size", (3, 224, 224))[-1]),
    )


def _register_builtins() -> None:
    for name, spec in SPECS.items():

        def factory(*, weights: str | None = None, device: str = "auto",
                    _n: str = name, _s: ModelSpec = spec) -> TorchEncoder:  # fmt: skip
            return create_timm_encoder(_n, _s, weights=weights, device=device)

        factory.__doc__ = spec.note or f"{name}: timm {spec.arch}"
        register_encoder(name)(factory)


_register_builtins()


@register_prefix("timm:")
def _any_timm(name: str, *, weights: str | None = None, device: str = "auto") -> TorchEncoder:
    """``timm:<model>``: any timm model, its normalisation from timm's pretrained config."""
    return create_timm_encoder(name, timm_spec(name[len("timm:") :]), weights=weights,
                               device=device)  # fmt: skip

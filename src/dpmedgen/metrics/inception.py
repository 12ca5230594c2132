"""TF Inception-v3 (2015-12-05) pool features from a user-supplied TorchScript file, for the standard FID.

The usual FID (Heusel et al. 2017) uses the 2048-d pool features of the TensorFlow Inception-v3 graph
``inception-2015-12-05.tgz``. NVIDIA translated that graph to TorchScript for StyleGAN2-ADA (PyTorch) and
StyleGAN3, and clean-fid reuses the same file. It cannot be downloaded here, so the user supplies it:

- file: ``inception-2015-12-05.pt`` (about 95 MB), from
  https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
  (the URL in NVlabs/stylegan2-ada-pytorch ``metrics/frechet_inception_distance.py`` and in
  GaParmar/clean-fid ``cleanfid/downloads_helper.py``). NVIDIA's NGC mirror
  https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pt
  is said to host the same file (not verified here: StyleGAN3's own code references the ``.pkl`` next to it,
  a pickle that needs NVIDIA's ``dnnlib``/``torch_utils`` to load; that ``.pkl`` is NOT supported here).

Calling convention, as used by the public code we checked:

- Loading: ``torch.jit.load(path).eval()`` (stylegan2-ada-pytorch ``metrics/metric_utils.py``,
  ``get_feature_detector``: ``torch.jit.load(f).eval().to(device)``; clean-fid ``InceptionV3W``:
  ``torch.jit.load(path).eval()``).
- Call: ``detector(images, return_features=True)`` -> ``(N, 2048)`` raw pool features before the softmax
  layer (stylegan2-ada-pytorch and stylegan3 ``metrics/frechet_inception_distance.py``:
  ``detector_kwargs = dict(return_features=True)  # Return raw features before the softmax layer.``;
  clean-fid ``resize_inside=True`` path: ``self.base(x, return_features=True).view((bs, 2048))``).
- Input: ``(N, 3, H, W)`` **uint8** RGB in ``[0, 255]`` of any size. StyleGAN's metric code feeds generator
  output as ``(img * 127.5 + 128).clamp(0, 255).to(torch.uint8)`` and dataset images (uint8) directly, and
  repeats grey images to 3 channels (``images.repeat([1, 3, 1, 1])``, stylegan3 ``metric_utils.py``).
- Inside (from a public decompiled copy of the TorchScript ``forward(img, return_features=False,
  use_fp16=False, no_output_bias=False)``): asserts 3 channels, casts to float32, resizes to 299x299 with
  ``affine_grid`` + ``grid_sample(bilinear, padding 'border')``, normalizes ``(x - 128) / 128``, runs the
  layers and reshapes to ``(-1, 2048)``. So resizing happens inside; we pass images at their own size.

This is the StyleGAN2-ADA/StyleGAN3 ("legacy TF-compatible") protocol, not clean-fid's "clean" mode (which
resizes with PIL bicubic itself and calls ``detector.layers``): FIDs from the two protocols differ.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
NUM_INCEPTION_FEATURES = 2048

_WHAT = (
    f"the TF Inception-v3 (2015-12-05) TorchScript file {INCEPTION_FILENAME} used by StyleGAN2-ADA/StyleGAN3 "
    f"and clean-fid, e.g. from {INCEPTION_URL}"
)

_CACHE: dict[tuple, torch.jit.ScriptModule] = {}
_LOCK = threading.Lock()


def load_inception(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript Inception detector from ``path`` (``torch.jit.load``), in eval mode on ``device``.

    Raises FileNotFoundError if ``path`` is not a file, and ValueError if it is not a TorchScript archive
    (e.g. StyleGAN3's ``.pkl`` or a plain state dict); both messages name the path and the expected file.
    Loaded modules are cached per (resolved path, file size, mtime, device): do not modify the result.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"Inception weights {p} {what}; expected {_WHAT}")
    dev = torch.device(device)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, str(dev))
    with _LOCK:
        det = _CACHE.get(key)
        if det is None:
            try:
                with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; the file is TorchScript
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
                    det = torch.jit.load(str(p), map_location=dev)
            except Exception as e:  # RuntimeError for non-TorchScript files; keep the cause
                raise ValueError(
                    f"Inception weights {p} could not be loaded with torch.jit.load ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); expected {_WHAT}"
                ) from e
            det.eval()
            _CACHE[key] = det
    return det


def _detector_device(detector: torch.nn.Module) -> torch.device:
    for t in detector.parameters():
        return t.device
    for t in detector.buffers():
        return t.device
    return torch.device("cpu")


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Float images (N, H, W) in [0, 1] -> uint8 (N, 3, H, W) with value ``round(x * 255)`` in each channel."""
    x = torch.round(images.to(torch.float32) * 255.0).clamp_(0, 255).to(torch.uint8)
    return x.unsqueeze(1).repeat(1, 3, 1, 1)


def inception_features(
    images: np.ndarray | torch.Tensor,
    detector: torch.nn.Module,
    batch_size: int = 64,
) -> torch.Tensor:
    """2048-d Inception pool features of grey images, as a CPU float64 tensor (N, 2048).

    ``images``: (N, H, W) or (N, 1, H, W), float in [0, 1] (ValueError otherwise). Each batch is converted
    to uint8 ``round(x * 255)``, replicated to 3 (RGB) channels and passed as
    ``detector(x, return_features=True)`` on the detector's device; the detector resizes to 299x299 itself.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach()
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images are empty (N = 0)")
    if not x.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError("images must be finite with values in [0, 1]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _detector_device(detector)
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            batch = to_uint8_rgb(x[s : s + batch_size]).to(dev)
            f = detector(batch, return_features=True)
            if not isinstance(f, torch.Tensor) or f.numel() != batch.shape[0] * NUM_INCEPTION_FEATURES:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"the Inception detector returned {shape} for {batch.shape[0]} images; expected "
                    f"({batch.shape[0]}, {NUM_INCEPTION_FEATURES}) pool features (is it {INCEPTION_FILENAME}?)"
                )
            out.append(f.reshape(batch.shape[0], NUM_INCEPTION_FEATURES).to("cpu", torch.float64))
    return torch.cat(out)

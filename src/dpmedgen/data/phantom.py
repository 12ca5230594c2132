"""``brain_phantom``: an offline, multi-patient paired MRI/PET cohort synthesized from real anatomy.

No clinical data can be downloaded, so the default dataset is generated from the MNI152 2009
(non-linear, asymmetric) T1 template and its grey-matter (GM) and white-matter (WM) probability
maps, which nilearn ships with the package (no network access is needed). CSF is the remainder of
the template's brain mask, ``CSF = clip(mask - GM - WM, 0, 1)``.

Generative model
----------------
Every virtual patient ``i`` draws its own random numbers from ``SeedSequence([seed, i])``; the
labels are drawn from a separate stream of the same seed, so the cohort is bit-identical for the
same arguments. Per patient:

* **Anatomy / pose.** A subject space on the template's 1 mm grid is mapped into the template by a
  global similarity transform (isotropic size scaling ``1 + U(-scale_range, +scale_range)`` with a
  little per-axis anisotropy, rotations of a few degrees about every axis) plus a smooth random
  displacement field (Gaussian noise on an 8 mm control grid, Gaussian-smoothed, trilinearly
  interpolated, rescaled to an RMS displacement of ``deformation_mm``). Only the points of the
  requested slices are warped (``scipy.ndimage.map_coordinates``, trilinear), not whole volumes.
* **Slices.** ``slices_per_patient`` axial slices evenly spaced in subject-space ``z`` between
  ``z_range`` (template voxel indices; the default runs from just below the lateral ventricles to
  the upper convexity), all shifted by a per-patient random offset of up to ``z_jitter`` slices.
  ``slice`` in the output is that subject-space ``z`` index. Slices are shown with anterior at the
  top and the subject's left on the image's left. All slices of one patient are cropped to the same
  bounding box (the union of the patient's brain masks, plus a small margin), zero-padded to a
  square and resized with anti-aliasing to ``size x size``.
* **Atrophy** (severity ``a`` in [0, 1]): tissue maps are interpolated towards a precomputed
  atrophic version of the template in which the lateral/third ventricles are dilated by ~3 mm
  (periventricular GM/WM become CSF) and cortical GM bordering sulcal CSF is thinned (sulci widen).
  Controls get mild, age-like atrophy ``a ~ U(0, 0.3)``; impaired patients ``a ~ U(0.45, 1) *
  atrophy_strength``.
* **MRI (T1-weighted).** ``I = gain * bias * (w_WM*WM + w_GM*GM + w_CSF*CSF + texture)`` with
  per-patient tissue intensities (WM ~1.0 > GM ~0.6 > CSF ~0.15), a global gain, a smooth
  multiplicative bias field (exponential of a random 3-D quadratic polynomial, ~+-10 %) and the
  template's residual texture (T1 minus its tissue-model fit: deep-nuclei contrast etc.). After
  resizing, Rician noise is added (magnitude of a complex signal with Gaussian noise of standard
  deviation ``noise_level`` in each channel), then the image is divided by a fixed constant and
  clipped to [0, 1] (so per-patient intensity differences survive).
* **PET (FDG-like uptake).** ``U = gpet * (GM + 0.3*WM + 0.03*CSF) * (1 - h*R) * s(x)`` where ``R``
  in [0, 1] is a fixed hypometabolism pattern in template space (Gaussian blobs over bilateral
  inferior parietal / angular, posterior temporal (temporo-parietal) cortex and, weaker, the
  precuneus/posterior cingulate), ``h`` the patient's hypometabolism depth, ``gpet`` a global uptake
  factor and ``s`` a mild smooth regional variation. Because GM is the atrophied GM, atrophy also
  lowers uptake (partial volume). The uptake is blurred in-plane to PET resolution (Gaussian with
  FWHM ``pet_fwhm_mm``), resized, and spatially correlated, signal-dependent Gaussian noise of level
  ``pet_noise_level`` is added before fixed scaling and clipping to [0, 1].
* **Label.** Exactly ``round(impaired_fraction * n_patients)`` patients (a random subset) are
  label 1 = "impaired": stronger atrophy (MRI) and ``h ~ U(0.12, 0.32) * hypometabolism_strength``
  (PET); controls (label 0) have ``h ~ U(0, 0.05)``. Severities vary within each group and global
  gains, pose and anatomy vary too, so the difference is clear on group averages but not trivial
  on a single slice.

The per-patient latent variables (severities, scale, rotation, offsets) are recorded in
``provenance["latents"]`` next to every generator parameter, the seed, the nilearn version and the
template names.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np

from dpmedgen.data.schema import ImageSet

DATASET_NAME = "brain_phantom"

# Fixed display scaling: raw intensities are divided by these and clipped to [0, 1].
_MRI_SCALE = 1.35
_PET_SCALE = 1.15
# Hypometabolism pattern: (x, y, z) in MNI mm, sigma in mm, weight.
_HYPO_BLOBS = (
    ((-46.0, -62.0, 32.0), 14.0, 1.0),  # left inferior parietal / angular gyrus
    ((46.0, -62.0, 32.0), 14.0, 1.0),  # right inferior parietal / angular gyrus
    ((-54.0, -42.0, 10.0), 13.0, 1.0),  # left posterior temporal / temporo-parietal junction
    ((54.0, -42.0, 10.0), 13.0, 1.0),  # right posterior temporal / temporo-parietal junction
    ((0.0, -58.0, 34.0), 11.0, 0.6),  # precuneus / posterior cingulate
)
_TEMPLATE_NAMES = {
    "t1": "MNI152 2009 T1 template (nilearn.datasets.load_mni152_template, resolution=1)",
    "gm": "MNI152 2009 GM probability (nilearn.datasets.load_mni152_gm_template, resolution=1)",
    "wm": "MNI152 2009 WM probability (nilearn.datasets.load_mni152_wm_template, resolution=1)",
}


@dataclass(frozen=True)
class _Templates:
    """Template-derived maps cropped to the brain (+ margin); all float32, indexed [x, y, z]."""

    maps: dict[str, np.ndarray]  # gm, wm, csf, texture, dgm, dwm, region
    origin: np.ndarray  # full-grid voxel index of cropped voxel (0, 0, 0)
    full_shape: tuple[int, int, int]
    brain_lo: np.ndarray  # brain bounding box in full-grid voxels (inclusive)
    brain_hi: np.ndarray
    centre: np.ndarray  # brain centroid, full-grid voxels
    affine: np.ndarray
    tissue_fit: tuple[float, float, float]  # T1 ~ a*WM + b*GM + c*CSF


@functools.lru_cache(maxsize=2)
def _load_templates(atrophy_mm: float = 3.0) -> _Templates:
    """Load the nilearn MNI152 templates once per process and derive every map the model needs; `atrophy_mm` is
    the ventricular enlargement (mm) of the fully atrophic template."""
    from scipy import ndimage
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    affine = np.asarray(t1_img.affine, dtype=float)
    full_shape = t1.shape

    mask = t1 > 0.0
    idx = np.argwhere(mask)
    brain_lo, brain_hi = idx.min(0), idx.max(0)
    margin = 6
    lo = np.maximum(brain_lo - margin, 0)
    hi = np.minimum(brain_hi + margin + 1, full_shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    t1, gm, wm, mask = t1[crop], gm[crop], wm[crop], mask[crop]
    gm = np.where(mask, np.clip(gm, 0, 1), 0).astype(np.float32)
    wm = np.where(mask, np.clip(wm, 0, 1), 0).astype(np.float32)
    tot = gm + wm
    over = tot > 1.0
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.where(mask, np.clip(1.0 - gm - wm, 0, 1), 0).astype(np.float32)

    # Residual texture of the real T1 beyond a 3-tissue linear model (deep nuclei, vessels, ...).
    design = np.stack([wm[mask], gm[mask], csf[mask]], axis=1).astype(np.float64)
    fit, *_ = np.linalg.lstsq(design, t1[mask].astype(np.float64), rcond=None)
    texture = np.zeros_like(t1)
    texture[mask] = t1[mask] - (design @ fit).astype(np.float32)

    # Voxel grid in MNI mm (cropped grid).
    origin = lo.astype(float)
    axes = [(np.arange(n, dtype=np.float32) + origin[k]) for k, n in enumerate(t1.shape)]
    mm = [affine[k, k] * axes[k] + affine[k, 3] for k in range(3)]  # the template affine is diagonal
    mx, my, mz = np.meshgrid(*mm, indexing="ij", sparse=True)

    # Atrophy direction 1: ventricular enlargement (dilate central CSF by `atrophy_mm`, 1 mm voxels).
    central = (np.abs(mx) < 30) & (my > -48) & (my < 28) & (mz > -6) & (mz < 36)
    vent = (csf > 0.5) & central & mask
    vent = ndimage.binary_opening(vent, iterations=1)
    grown = ndimage.binary_dilation(vent, iterations=max(1, round(atrophy_mm))) & mask
    grow = np.clip(ndimage.gaussian_filter(grown.astype(np.float32), 1.0) - csf, 0, 1) * mask
    # Atrophy direction 2: cortical thinning / sulcal widening (GM next to non-ventricular CSF).
    sulcal = np.where(vent, 0.0, csf).astype(np.float32)
    near = np.clip(1.2 * ndimage.gaussian_filter(sulcal, atrophy_mm / 3.0), 0, 0.5)
    thin = np.clip(grow + near * (1 - grow), 0, 1)
    dgm = (-gm * thin).astype(np.float32)
    dwm = (-wm * grow).astype(np.float32)

    # Hypometabolism pattern (fixed, in template space).
    region = np.zeros_like(t1)
    for (cx, cy, cz), sigma, weight in _HYPO_BLOBS:
        region += weight * np.exp(-((mx - cx) ** 2 + (my - cy) ** 2 + (mz - cz) ** 2) / (2 * sigma**2)).astype(
            np.float32
        )
    region = np.clip(region, 0, 1).astype(np.float32)

    centre = idx.mean(0)
    maps = {"gm": gm, "wm": wm, "csf": csf, "texture": texture, "dgm": dgm, "dwm": dwm, "region": region}
    for arr in maps.values():
        arr.setflags(write=False)
    return _Templates(
        maps=maps,
        origin=origin,
        full_shape=tuple(int(s) for s in full_shape),
        brain_lo=brain_lo,
        brain_hi=brain_hi,
        centre=centre,
        affine=affine,
        tissue_fit=tuple(float(f) for f in fit),
    )


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng, lo, hi, spacing_mm, smooth, n_channels):
    """Smooth random field on a coarse control grid covering [lo, hi] (voxels = mm)."""
    from scipy import ndimage
    shape = tuple(int(math.ceil((high - low) / spacing_mm)) + 3 for low, high in zip(lo, hi))
    noise = rng.standard_normal((n_channels, *shape)).astype(np.float32)
    for c in range(n_channels):
        noise[c] = ndimage.gaussian_filter(noise[c], smooth, mode="nearest")
    return noise


def _eval_field(field, points, lo, spacing_mm):
    from scipy import ndimage
    coords = [(points[k] - (lo[k] - spacing_mm)) / spacing_mm for k in range(3)]
    return np.stack(
        [ndimage.map_coordinates(f, coords, order=1, mode="nearest", prefilter=False) for f in field]
    )


def _resize_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w) square stack -> (n, size, size); anti-aliased when shrinking."""
    from skimage.transform import resize as _sk_resize
    shrink = stack.shape[1] > size
    return _sk_resize(
        stack, (stack.shape[0], size, size), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True
    ).astype(np.float32)


@dataclass(frozen=True)
class _Grid:
    """The subject-space sampling grid shared by every patient (template voxels = mm)."""

    x: np.ndarray  # (nx, ny) in-plane subject-space x of every sample
    y: np.ndarray  # (nx, ny) in-plane subject-space y of every sample
    field_lo: np.ndarray  # corners of the region the displacement field's control grid covers
    field_hi: np.ndarray
    centre: np.ndarray  # float32 brain centroid: the centre of rotation / scaling
    step: float  # in-plane sample spacing (mm)
    pet_sigma_px: float  # in-plane PET blur (Gaussian sigma) in samples
    spacing: float = 8.0  # displacement control-grid spacing (mm)


@dataclass(frozen=True)
class _Latents:
    """One patient's random draws: latent variables, displacement control field and image noise."""

    scale: np.ndarray
    angles: np.ndarray
    z_off: int
    atrophy: float
    hypo: float
    gain: float
    w_wm: float
    w_gm: float
    w_csf: float
    pet_gain: float
    bias_coef: np.ndarray
    pet_var: np.ndarray
    disp: np.ndarray
    noise_mri: np.ndarray
    noise_pet: np.ndarray


def _validated_params(
    *,
    n_patients,
    slices_per_patient,
    size,
    impaired_fraction,
    seed,
    noise_level,
    deformation_mm,
    scale_range,
    rotation_deg,
    atrophy_strength,
    hypometabolism_strength,
    atrophy_mm,
    pet_fwhm_mm,
    pet_noise_level,
    z_range,
    z_jitter,
) -> dict:
    """The generator parameters as recorded in the provenance, after checking them (ValueError if invalid)."""
    if n_patients < 1 or slices_per_patient < 1:
        raise ValueError("n_patients and slices_per_patient must be >= 1")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if not 0.0 <= impaired_fraction <= 1.0:
        raise ValueError(f"impaired_fraction must be in [0, 1], got {impaired_fraction}")
    if min(noise_level, pet_noise_level, deformation_mm, scale_range, rotation_deg, pet_fwhm_mm) < 0:
        raise ValueError("noise levels, deformation, scale range, rotation and FWHM must be >= 0")
    if atrophy_strength < 0 or hypometabolism_strength < 0:
        raise ValueError("atrophy_strength and hypometabolism_strength must be >= 0")
    if not 1.0 <= atrophy_mm <= 20.0:
        raise ValueError(f"atrophy_mm must be in [1, 20], got {atrophy_mm}")
    z_lo, z_hi = int(z_range[0]), int(z_range[1])
    if z_hi < z_lo:
        raise ValueError(f"z_range must be increasing, got {z_range}")
    return dict(
        n_patients=n_patients,
        slices_per_patient=slices_per_patient,
        size=size,
        impaired_fraction=impaired_fraction,
        seed=seed,
        noise_level=noise_level,
        deformation_mm=deformation_mm,
        scale_range=scale_range,
        rotation_deg=rotation_deg,
        atrophy_strength=atrophy_strength,
        hypometabolism_strength=hypometabolism_strength,
        atrophy_mm=atrophy_mm,
        pet_fwhm_mm=pet_fwhm_mm,
        pet_noise_level=pet_noise_level,
        z_range=[z_lo, z_hi],
        z_jitter=z_jitter,
    )


def _draw_labels(n_patients: int, n_impaired: int, seed: int) -> np.ndarray:
    """Per-patient labels (int8): a random subset of `n_impaired` patients is 1, from the seed's label stream."""
    label_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1AB]))
    labels = np.zeros(n_patients, dtype=np.int8)
    labels[label_rng.permutation(n_patients)[:n_impaired]] = 1
    return labels


def _base_slice_z(z_lo: int, z_hi: int, slices_per_patient: int) -> np.ndarray:
    """Subject-space z indices of the slices before the per-patient offset, evenly spaced over [z_lo, z_hi]."""
    if slices_per_patient == 1:
        base_z = np.array([(z_lo + z_hi) / 2.0])
    else:
        base_z = np.linspace(z_lo, z_hi, slices_per_patient)
    return np.round(base_z).astype(int)


def _subject_grid(tpl: _Templates, size: int, pet_fwhm_mm: float) -> _Grid:
    """The subject-space in-plane sampling grid (1 mm voxels): the brain's bounding box plus room for up-scaling."""
    # Sampled directly at about the output pixel size, never coarser than 1.5 mm nor than half an
    # output pixel (so small outputs are still resized from twice their resolution, with
    # anti-aliasing): the template maps are smooth, and this keeps the work proportional to the output.
    pad = 14
    extent = float(max(tpl.brain_hi[:2] - tpl.brain_lo[:2])) + 8.0
    step = float(np.clip(extent / size, 0.5, max(1.5, extent / (2 * size))))
    xs = np.arange(tpl.brain_lo[0] - pad, tpl.brain_hi[0] + pad + 1, step, dtype=np.float32)
    ys = np.arange(tpl.brain_lo[1] - pad, tpl.brain_hi[1] + pad + 1, step, dtype=np.float32)
    grid_x, grid_y = np.meshgrid(xs, ys, indexing="ij")
    return _Grid(
        x=grid_x,
        y=grid_y,
        field_lo=np.array([xs[0], ys[0], 0.0]),
        field_hi=np.array([xs[-1], ys[-1], tpl.full_shape[2] - 1.0]),
        centre=tpl.centre.astype(np.float32),
        step=step,
        pet_sigma_px=pet_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / step,
    )


def _draw_latents(rng: np.random.Generator, label: int, grid: _Grid, params: dict) -> _Latents:
    """One patient's latent variables, displacement field and noise, drawn from its stream in a fixed order."""
    scale_range, rotation_deg, z_jitter = params["scale_range"], params["rotation_deg"], params["z_jitter"]
    n_slices, size = params["slices_per_patient"], params["size"]
    scale = (1.0 + rng.uniform(-scale_range, scale_range)) * (1.0 + rng.uniform(-0.02, 0.02, 3))
    angles = rng.uniform(-1.0, 1.0, 3) * np.array([0.6, 0.6, 1.0]) * rotation_deg
    z_off = int(rng.integers(-z_jitter, z_jitter + 1)) if z_jitter > 0 else 0
    if label == 1:
        atrophy = rng.uniform(0.45, 1.0) * params["atrophy_strength"]
        hypo = rng.uniform(0.12, 0.32) * params["hypometabolism_strength"]
    else:
        atrophy = rng.uniform(0.0, 0.3) * params["atrophy_strength"]
        hypo = rng.uniform(0.0, 0.05) * params["hypometabolism_strength"]
    atrophy = float(min(atrophy, 1.0))
    gain = rng.uniform(0.88, 1.06)
    w_wm = 1.0 + rng.normal(0.0, 0.025)
    w_gm = 0.60 + rng.normal(0.0, 0.03)
    w_csf = max(0.05, 0.15 + rng.normal(0.0, 0.03))
    pet_gain = rng.uniform(0.88, 1.08)
    bias_coef = rng.normal(0.0, 0.05, 9)
    pet_var = rng.normal(0.0, 0.04, 9)
    disp = _smooth_field(rng, grid.field_lo, grid.field_hi, grid.spacing, 1.5, 3)
    noise_mri = rng.standard_normal((2, n_slices, size, size)).astype(np.float32)
    noise_pet = rng.standard_normal((n_slices, size, size)).astype(np.float32)
    return _Latents(
        scale=scale, angles=angles, z_off=z_off, atrophy=atrophy, hypo=hypo, gain=gain, w_wm=w_wm, w_gm=w_gm,
        w_csf=w_csf, pet_gain=pet_gain, bias_coef=bias_coef, pet_var=pet_var, disp=disp, noise_mri=noise_mri,
        noise_pet=noise_pet,
    )


def _slice_points(grid: _Grid, zs: np.ndarray) -> np.ndarray:
    """Subject-space coordinates (3, n_slices, nx, ny), float32, of every sample of the slices at `zs`."""
    nx, ny = grid.x.shape
    pts = np.empty((3, len(zs), nx, ny), np.float32)
    pts[0] = grid.x
    pts[1] = grid.y
    pts[2] = zs[:, None, None]
    return pts


def _template_coords(tpl: _Templates, grid: _Grid, lat: _Latents, pts: np.ndarray, deformation_mm: float):
    """Cropped-template voxel coordinates of the subject points `pts`: inverse pose plus smooth displacement."""
    if deformation_mm > 0:
        d = _eval_field(lat.disp, pts, grid.field_lo, grid.spacing)
        rms = float(np.sqrt(np.mean(np.sum(lat.disp.astype(np.float64) ** 2, axis=0))))
        d *= deformation_mm / max(rms, 1e-6)
    else:
        d = 0.0
    # Explicit element-wise sums (no BLAS) keep the output bit-identical across thread counts.
    inv = np.linalg.inv(_rotation(lat.angles) @ np.diag(lat.scale)).astype(np.float32)
    centre = grid.centre[:, None, None, None]
    rel = pts - centre
    src = np.stack([inv[k, 0] * rel[0] + inv[k, 1] * rel[1] + inv[k, 2] * rel[2] for k in range(3)])
    src += centre + d - tpl.origin.astype(np.float32)[:, None, None, None]
    return src


def _sample_maps(tpl: _Templates, src: np.ndarray) -> dict[str, np.ndarray]:
    """Every template map trilinearly interpolated at the template coordinates `src` (zero outside)."""
    from scipy import ndimage
    return {
        k: ndimage.map_coordinates(v, src, order=1, mode="constant", cval=0.0, prefilter=False)
        for k, v in tpl.maps.items()
    }


def _smooth_gains(pts: np.ndarray, centre: np.ndarray, lat: _Latents) -> tuple[np.ndarray, np.ndarray]:
    """The MRI bias field and the PET regional variation: exponentials of quadratics in normalised coordinates."""
    u = [(pts[k] - centre[k]) / 80.0 for k in range(3)]
    basis = np.stack([u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]])
    bias = np.exp(sum(np.float32(c) * b for c, b in zip(lat.bias_coef, basis)))
    regional = np.exp(sum(np.float32(c) * b for c, b in zip(lat.pet_var, basis)))
    return bias, regional


def _mri_and_uptake(s: dict[str, np.ndarray], pts: np.ndarray, grid: _Grid, lat: _Latents):
    """Noise-free T1 intensity, PET uptake blurred to PET resolution, and the brain mask, on the warped slices."""
    from scipy import ndimage
    gm = s["gm"] + lat.atrophy * s["dgm"]
    wm = s["wm"] + lat.atrophy * s["dwm"]
    csf = s["csf"] - lat.atrophy * (s["dgm"] + s["dwm"])
    brain = (gm + wm + csf) > 0.5
    bias, regional = _smooth_gains(pts, grid.centre, lat)
    mri = lat.gain * bias * (lat.w_wm * wm + lat.w_gm * gm + lat.w_csf * csf + s["texture"])
    uptake = lat.pet_gain * regional * (gm + 0.3 * wm + 0.03 * csf) * (1.0 - lat.hypo * s["region"])
    uptake = ndimage.gaussian_filter(uptake, (0, grid.pet_sigma_px, grid.pet_sigma_px), mode="constant")
    return mri, uptake, brain


def _orient(a: np.ndarray) -> np.ndarray:
    """Slices (n, x, y) as images (n, rows, cols): anterior at the top, the subject's left on the left."""
    return np.ascontiguousarray(np.swapaxes(a, 1, 2)[:, ::-1, :])


def _crop_box(brain: np.ndarray, step: float) -> tuple[int, int, int, int, int]:
    """The patient's crop box (r0, r1, c0, c1, side): the union of its brain masks plus a ~3 mm margin."""
    rows = np.flatnonzero(brain.any(axis=(0, 2)))
    cols = np.flatnonzero(brain.any(axis=(0, 1)))
    if rows.size == 0:  # degenerate (e.g. absurd z_range): keep the full field of view
        rows, cols = np.arange(brain.shape[1]), np.arange(brain.shape[2])
    m = max(1, int(round(3 / step)))
    r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, brain.shape[1])
    c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, brain.shape[2])
    return r0, r1, c0, c1, max(r1 - r0, c1 - c0)


def _square_resize(a: np.ndarray, box: tuple[int, int, int, int, int], size: int) -> np.ndarray:
    """The stack `a` cropped to `box`, zero-padded to a centred square and resized to (n, size, size)."""
    r0, r1, c0, c1, side = box
    out = np.zeros((a.shape[0], side, side), np.float32)
    h, w = r1 - r0, c1 - c0
    oy, ox = (side - h) // 2, (side - w) // 2
    out[:, oy : oy + h, ox : ox + w] = a[:, r0:r1, c0:c1]
    return _resize_stack(out, size)


def _add_rician_noise(mri: np.ndarray, noise_mri: np.ndarray, noise_level: float) -> np.ndarray:
    """MRI magnitude with Rician noise: |signal + complex Gaussian noise of std `noise_level` per channel|."""
    return np.sqrt((mri + noise_level * noise_mri[0]) ** 2 + (noise_level * noise_mri[1]) ** 2)


def _add_pet_noise(uptake: np.ndarray, noise_pet: np.ndarray, pet_noise_level: float) -> np.ndarray:
    """PET with spatially correlated, signal-dependent Gaussian noise of level `pet_noise_level`."""
    from scipy import ndimage
    corr = ndimage.gaussian_filter(noise_pet, (0, 1.3, 1.3))
    corr /= max(float(corr.std()), 1e-6)
    pet = np.maximum(uptake, 0.0)
    return pet + pet_noise_level * np.sqrt(pet / 0.8 + 0.02) * corr


def _render_patient(tpl: _Templates, grid: _Grid, lat: _Latents, zs: np.ndarray, params: dict, with_region: bool):
    """One patient's MRI, PET (and, if asked, region) slices, (n_slices, size, size) each, in [0, 1]."""
    size = params["size"]
    pts = _slice_points(grid, zs)
    s = _sample_maps(tpl, _template_coords(tpl, grid, lat, pts, params["deformation_mm"]))
    mri, uptake, brain = _mri_and_uptake(s, pts, grid, lat)
    mri, uptake, brain, region = _orient(mri), _orient(uptake), _orient(brain), _orient(s["region"])
    box = _crop_box(brain, grid.step)
    mri = _add_rician_noise(_square_resize(mri, box, size), lat.noise_mri, params["noise_level"])
    pet = _add_pet_noise(_square_resize(uptake, box, size), lat.noise_pet, params["pet_noise_level"])
    region = np.clip(_square_resize(region, box, size), 0.0, 1.0) if with_region else None
    return np.clip(mri / _MRI_SCALE, 0.0, 1.0), np.clip(pet / _PET_SCALE, 0.0, 1.0), region


def _latent_record(label: int, lat: _Latents) -> dict:
    """The provenance entry of one patient: its label and latent variables, rounded to 6 decimals."""
    return {
        "label": label,
        "atrophy": round(lat.atrophy, 6),
        "hypometabolism": round(float(lat.hypo), 6),
        "scale": [round(float(v), 6) for v in lat.scale],
        "rotation_deg": [round(float(v), 6) for v in lat.angles],
        "z_offset": lat.z_off,
        "mri_gain": round(float(lat.gain), 6),
        "pet_gain": round(float(lat.pet_gain), 6),
    }


def _provenance(params: dict, seed: int, tpl: _Templates, n_impaired: int, latents: dict) -> dict:
    """The cohort's provenance: generator parameters, seed, nilearn version, templates and per-patient latents."""
    import nilearn

    return {
        "generator": "dpmedgen.data.phantom.make_brain_phantom",
        "params": params,
        "seed": int(seed),
        "nilearn_version": nilearn.__version__,
        "templates": dict(_TEMPLATE_NAMES),
        "template_tissue_fit": {"wm": tpl.tissue_fit[0], "gm": tpl.tissue_fit[1], "csf": tpl.tissue_fit[2]},
        "hypometabolism_blobs_mni_mm": [list(c) + [s_, w_] for c, s_, w_ in _HYPO_BLOBS],
        "orientation": "axial; rows anterior->posterior (anterior at top), columns subject left->right",
        "n_impaired": n_impaired,
        "latents": latents,
    }


def make_brain_phantom(
    n_patients: int = 64,
    slices_per_patient: int = 12,
    size: int = 128,
    impaired_fraction: float = 0.5,
    seed: int = 0,
    noise_level: float = 0.03,
    deformation_mm: float = 4.0,
    scale_range: float = 0.08,
    rotation_deg: float = 5.0,
    atrophy_strength: float = 1.0,
    hypometabolism_strength: float = 1.0,
    atrophy_mm: float = 3.0,
    pet_fwhm_mm: float = 7.0,
    pet_noise_level: float = 0.04,
    z_range: tuple[int, int] = (76, 134),
    z_jitter: int = 3,
    progress: bool = True,
    return_region: bool = False,
) -> ImageSet | tuple[ImageSet, np.ndarray]:
    """Synthesize the ``brain_phantom`` paired MRI/PET cohort (see the module docstring).

    Returns an :class:`ImageSet` with modalities ``"mri"`` and ``"pet"`` of shape
    ``(n_patients * slices_per_patient, size, size)``, rows ordered by patient then slice. With
    ``return_region=True`` it returns ``(images, region)`` where ``region`` (float32, same shape) is
    the hypometabolism pattern ``R`` warped into each output image (ground truth for tests and
    analysis; ``R`` itself does not depend on the label, only its depth ``h`` does).
    """
    from tqdm import tqdm

    params = _validated_params(
        n_patients=n_patients, slices_per_patient=slices_per_patient, size=size, impaired_fraction=impaired_fraction,
        seed=seed, noise_level=noise_level, deformation_mm=deformation_mm, scale_range=scale_range,
        rotation_deg=rotation_deg, atrophy_strength=atrophy_strength, hypometabolism_strength=hypometabolism_strength,
        atrophy_mm=atrophy_mm, pet_fwhm_mm=pet_fwhm_mm, pet_noise_level=pet_noise_level, z_range=z_range,
        z_jitter=z_jitter,
    )
    tpl = _load_templates(float(atrophy_mm))
    n_impaired = int(round(impaired_fraction * n_patients))
    labels = _draw_labels(n_patients, n_impaired, seed)
    base_z = _base_slice_z(*params["z_range"], slices_per_patient)
    grid = _subject_grid(tpl, size, pet_fwhm_mm)

    mri_out = np.empty((n_patients * slices_per_patient, size, size), np.float32)
    pet_out = np.empty_like(mri_out)
    region_out = np.empty_like(mri_out) if return_region else None
    slice_out = np.empty(n_patients * slices_per_patient, np.int32)
    latents = {}

    for i in tqdm(range(n_patients), desc="brain_phantom", unit="patient", file=sys.stderr, disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        label = int(labels[i])
        lat = _draw_latents(rng, label, grid, params)
        zs = np.clip(base_z + lat.z_off, 0, tpl.full_shape[2] - 1)
        mri, pet, region = _render_patient(tpl, grid, lat, zs, params, region_out is not None)
        rows_sl = slice(i * slices_per_patient, (i + 1) * slices_per_patient)
        mri_out[rows_sl] = mri
        pet_out[rows_sl] = pet
        if region_out is not None:
            region_out[rows_sl] = region
        slice_out[rows_sl] = zs
        latents[f"BP{i + 1:04d}"] = _latent_record(label, lat)

    images = ImageSet(
        modalities={"mri": mri_out, "pet": pet_out},
        patient_id=np.repeat([f"BP{i + 1:04d}" for i in range(n_patients)], slices_per_patient),
        slice=slice_out,
        label=np.repeat(labels, slices_per_patient),
        dataset=DATASET_NAME,
        provenance=_provenance(params, seed, tpl, n_impaired, latents),
    )
    if return_region:
        return images, region_out
    return images

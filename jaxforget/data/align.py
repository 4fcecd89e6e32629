"""Five-point face alignment: least-squares similarity transform and a bilinear warp.

Coordinates follow the usual face-alignment convention (OpenCV's): a point ``(x, y)`` with
integer values sits at the *centre* of pixel ``(column x, row y)``. Landmark files (CelebA,
VGGFace2) and the InsightFace template use this convention.

The template is InsightFace's five points for 112x112 crops (left eye, right eye, nose tip, left
mouth corner, right mouth corner). :func:`template_for` adapts it to another output size: for
112x96 it is the standard ``x - 8`` template (the same crop with 8 columns dropped on each side);
other sizes are scaled from the 112x112 (or 112x96) template.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

#: InsightFace five-point template for a 112x112 aligned face, ``(x, y)`` per row.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for(output_size: Sequence[int]) -> np.ndarray:
    """Five-point template ``(5, 2)`` in ``(x, y)`` for an output of ``(height, width)``.

    * ``(112, 112)``: the InsightFace template.
    * ``(112, 96)``: the InsightFace template with ``x - 8`` (MobileFaceNet / SphereFace crops).
    * other sizes: the 112x112 template scaled by ``(width / 112, height / 112)`` when the aspect
      is square, else the 112x96 template scaled by ``(width / 96, height / 112)``.
    """
    h, w = int(output_size[0]), int(output_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"output_size must be positive (height, width); got {tuple(output_size)}")
    base = ARCFACE_TEMPLATE_112.copy()
    base_w = 112.0
    if abs(w / h - 96.0 / 112.0) < abs(w / h - 1.0):
        base[:, 0] -= 8.0
        base_w = 96.0
    # Scale about the pixel-centre convention: a point at continuous position p (edges at -0.5)
    # maps to (p + 0.5) * s - 0.5.
    sx, sy = w / base_w, h / 112.0
    out = np.empty_like(base)
    out[:, 0] = (base[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (base[:, 1] + 0.5) * sy - 0.5
    return out


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Closed-form solution (Umeyama 1991, without reflection): with centred point sets ``a, b`` and
    ``S = b^T a / n``, ``R = U diag(1, det) V^T`` from the SVD of ``S``, scale
    ``c = trace(diag(sigma) D) / var(a)`` and ``t = mean(b) - c R mean(a)``.

    Args:
      src: ``(N, 2)`` points ``(x, y)`` in the source image, ``N >= 2``.
      dst: ``(N, 2)`` target points.
    Returns:
      ``(2, 3)`` float64 matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"similarity_transform needs two (N, 2) point arrays with N >= 2 of equal shape; "
            f"got src {src.shape} and dst {dst.shape}"
        )
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_a = (a**2).sum() / n
    if not np.isfinite(var_a) or var_a <= 1e-12:
        raise ValueError(f"landmarks are degenerate (all points coincide): {src.tolist()}")
    cov = b.T @ a / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_a
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Vectorised :func:`similarity_transform` for many point sets: ``(N, K, 2) -> (N, 2, 3)``.

    In 2-D the least-squares similarity is linear in ``z = a + ib`` (``x' = a x - b y + tx``,
    ``y' = b x + a y + ty``): with centred complex points ``s`` and ``d``,
    ``z = sum(conj(s) d) / sum(|s|^2)`` -- the same minimiser as Umeyama's rotation and scale.
    Rows with non-finite or coincident points give NaN matrices.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 3 or src.shape[2] != 2 or dst.shape != src.shape[1:]:
        raise ValueError(f"similarity_transforms needs src (N, K, 2) and dst (K, 2); got {src.shape} and {dst.shape}")
    s = src[..., 0] + 1j * src[..., 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    s_mean, d_mean = s.mean(1, keepdims=True), d.mean()
    sc, dc = s - s_mean, d - d_mean
    denom = (np.abs(sc) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.conj(sc) * dc[None]).sum(1) / np.where(denom > 1e-12, denom, np.nan)
    t = d_mean - z * s_mean[:, 0]
    m = np.empty((len(src), 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = z.real, -z.imag, t.real
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = z.imag, z.real, t.imag
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to ``(..., 2)`` points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine matrix."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def warp_affine(image: Image.Image | np.ndarray, m: np.ndarray, output_size: Sequence[int]) -> np.ndarray:
    """Warp ``image`` with the forward affine ``m`` (source -> output pixel coordinates).

    Bilinear sampling with PIL (C, releases the GIL); pixels that fall outside the source are
    black. PIL places pixel centres at ``+0.5``, so the inverse map is conjugated by that shift to
    keep the integer-centre convention used by the landmarks and the template.

    Returns a ``uint8`` array ``(H, W, C)`` (``C`` as in the input image).
    """
    h, w = int(output_size[0]), int(output_size[1])
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    inv = invert_affine(m)
    # PIL samples input at inv_pil @ (u, v, 1) for output continuous coords (u, v) = (x+.5, y+.5)
    # and reads input pixel centres at +0.5: inv_pil = T(+.5) . inv . T(-.5).
    a, b, c = inv[0]
    d, e, f = inv[1]
    c_pil = c + 0.5 - 0.5 * (a + b)
    f_pil = f + 0.5 - 0.5 * (d + e)
    out = image.transform((w, h), Image.Transform.AFFINE, (a, b, c_pil, d, e, f_pil), resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def align_face(
    image: Image.Image | np.ndarray,
    landmarks: np.ndarray,
    output_size: Sequence[int] = (112, 112),
    template: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Align a face so its five ``landmarks`` land on the template at ``output_size``.

    Returns ``(aligned uint8 (H, W, C), matrix (2, 3))``.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if landmarks.shape != (5, 2):
        raise ValueError(f"align_face needs 5 (x, y) landmarks; got shape {landmarks.shape}")
    dst = template_for(output_size) if template is None else np.asarray(template, dtype=np.float64)
    m = similarity_transform(landmarks, dst)
    return warp_affine(image, m, output_size), m


def crop_face(photo: Image.Image, landmarks: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The face aligned to the template at ``size`` with :func:`align_face`.

    When the face is more than twice the crop's size the photo is first shrunk by an integer
    factor (box filter), so the bilinear warp does not alias.
    """
    landmarks = np.asarray(landmarks, np.float64)
    m = similarity_transform(landmarks, template_for(size))
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    factor = int(1.0 / scale) if scale > 0 else 1
    if factor >= 2:
        photo = photo.reduce(factor)
        landmarks = (landmarks + 0.5) / factor - 0.5
    return align_face(photo, landmarks, size)[0]


def fixed_crop_box(image_size: Sequence[int], output_size: Sequence[int]) -> tuple[float, float, float, float]:
    """Face box ``(left, top, right, bottom)`` used for CelebA aligned images without landmarks.

    Measured on the 89x109 CelebA images: the box ``(18, 28, 70, 88)`` resized to 96x112 gives a
    CASIA MobileFaceNet leave-one-out mAP of 0.779 on the CelebA subset (docs/FORMATS.md). The box is
    scaled with the image (so ``(36, 56, 140, 176)`` on the official 178x218 images); when the
    requested output aspect differs from 96:112 the box width is widened or narrowed about its
    centre to match the output aspect (no distortion).

    Args:
      image_size: ``(height, width)`` of the decoded image.
      output_size: ``(height, width)`` of the model input.
    """
    ih, iw = float(image_size[0]), float(image_size[1])
    oh, ow = float(output_size[0]), float(output_size[1])
    sx, sy = iw / 89.0, ih / 109.0
    left, top, right, bottom = 18.0 * sx, 28.0 * sy, 70.0 * sx, 88.0 * sy
    box_aspect = (right - left) / (bottom - top)
    out_aspect = ow / oh
    if abs(box_aspect - out_aspect) / out_aspect > 0.05:
        cx, half = (left + right) / 2.0, (bottom - top) * out_aspect / 2.0
        left, right = cx - half, cx + half
    return left, top, right, bottom


def aligned_crop_box(image_size: Sequence[int], output_size: Sequence[int]) -> tuple[float, float, float, float]:
    """Box ``(left, top, right, bottom)`` of an already aligned face that matches ``output_size``.

    For faces aligned to the 112x112 template (CelebA-wild's ``aligned_112``, ``.bin`` and ``.rec``
    packs), the rule depends on the model's input aspect, as :func:`template_for` does: an output
    closer to 96:112 (MobileFaceNet's 112x96) keeps the central ``96/112`` of the columns -- the
    112x96 template is the same template 8 px to the left, so at 112x112 this is columns 8..103, a
    crop, not a resize; any other output keeps the whole image. The box is then resized to the
    output (a no-op when the sizes already agree).

    Args:
      image_size: ``(height, width)`` of the decoded aligned face.
      output_size: ``(height, width)`` of the model input.
    """
    ih, iw = float(image_size[0]), float(image_size[1])
    h, w = float(output_size[0]), float(output_size[1])
    if abs(w / h - 96.0 / 112.0) < abs(w / h - 1.0):
        margin = iw * 8.0 / 112.0
        return margin, 0.0, iw - margin, ih
    return 0.0, 0.0, iw, ih


"""Procedural face-like identities: a deterministic synthetic dataset for demos and tests.

An identity is a vector of shape and colour parameters (face outline, skin / hair / eye / lip
colours, hairstyle and hairline, eye spacing and size, brows, nose, mouth, beard, glasses) and a
complexion pattern: a mirrored grid of colour offsets over the face whose 96 values are drawn
independently for each identity. The shape and colour parameters are few and shared by every
identity (skin tone, hair colour), like the coarse traits of real people; the pattern gives each
identity many independent factors of its own, as real faces have, so that a model trained on
these identities spreads them over its whole embedding instead of a few shared directions (the
closed-form projection of ten identities then costs the others little: docs/RESULTS.md section 1).

Each image of an identity varies nuisance factors: a small residual pose, as in aligned crops
(in-plane rotation, scale, translation, yaw that shifts the features and narrows the outline),
lighting (direction, strength, ambient level, colour tint), expression (smile, open mouth, eye
openness, brow raise), background (colour, gradient, low-frequency texture), clothing colour, an
occluding patch now and then, and pixel noise.

The nuisance factors dominate pixel distances, so raw pixels retrieve identities poorly, while the
identity parameters stay visible, so a small encoder learns them (``studies/synthetic_check.py``
measures both). Rendering is vectorised numpy over a batch of images with anti-aliased (sigmoid)
edges; images are a pure function of ``(seed, identity, image number, size)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxforget.data.source import FaceSource, as_size

# Bump whenever a change to this file changes any rendered image: the runner's caches (base models
# trained on synthetic identities, their embeddings) are keyed by it.
GENERATOR_VERSION = 2

# Identity parameter names (columns of SyntheticFaces.identity_params).
_ID_FIELDS = (
    "face_w", "face_h", "jaw",                       # outline
    "skin_r", "skin_g", "skin_b",
    "hair_r", "hair_g", "hair_b",
    "hair_vol", "hair_len", "hairline", "hair_wave", "hair_phase",
    "eye_dx", "eye_y", "eye_w", "eye_h",
    "iris_r", "iris_g", "iris_b",
    "brow_dy", "brow_tilt", "brow_thick",
    "nose_len", "nose_w",
    "mouth_y", "mouth_w", "lip_r", "lip_g", "lip_b",
    "beard", "glasses",
)
_F = {n: k for k, n in enumerate(_ID_FIELDS)}

# The complexion pattern: a grid of colour offsets over the face, PATTERN_ROWS x PATTERN_HALF_COLS
# cells of the left half mirrored onto the right (faces stay symmetric, so a horizontal flip shows
# the same identity), 3 channels each, every value drawn independently per identity (N(0, 1)) and
# painted at PATTERN_AMP of the colour range: 96 independent factors per identity.
PATTERN_ROWS = 8
PATTERN_HALF_COLS = 4
PATTERN_AMP = 0.15
PATTERN_SIZE = PATTERN_ROWS * PATTERN_HALF_COLS * 3


def _sig(d: np.ndarray) -> np.ndarray:
    d = np.clip(d, -30.0, 30.0).astype(np.float32, copy=False)
    return 1.0 / (1.0 + np.exp(-d))


def identity_parameters(seed: int, identity: int) -> np.ndarray:
    """The parameter vector of ``identity``: the ``_ID_FIELDS`` shape and colour values, then the
    ``PATTERN_SIZE`` values of its complexion pattern."""
    r = np.random.default_rng([int(seed), 1, int(identity)])
    skin_tone = r.uniform(0.25, 0.95)
    skin = np.array([0.35 + 0.6 * skin_tone, 0.22 + 0.5 * skin_tone, 0.15 + 0.42 * skin_tone]) + r.normal(0, 0.04, 3)
    hair_kind = r.integers(0, 5)
    hair_base = [(0.08, 0.06, 0.05), (0.35, 0.22, 0.12), (0.85, 0.7, 0.4), (0.65, 0.25, 0.1), (0.7, 0.7, 0.7)][hair_kind]
    hair = np.asarray(hair_base) * r.uniform(0.7, 1.3) + r.normal(0, 0.08, 3)
    iris = r.uniform(0.05, 0.7, 3)
    lip = np.array([0.55, 0.2, 0.25]) * r.uniform(0.7, 1.3) + r.normal(0, 0.05, 3)
    v = dict(
        face_w=r.uniform(0.42, 0.62), face_h=r.uniform(0.62, 0.82), jaw=r.uniform(-0.25, 0.35),
        skin_r=skin[0], skin_g=skin[1], skin_b=skin[2],
        hair_r=hair[0], hair_g=hair[1], hair_b=hair[2],
        hair_vol=r.uniform(1.02, 1.35), hair_len=r.uniform(-0.3, 0.9), hairline=r.uniform(-0.62, -0.3),
        hair_wave=r.uniform(0.0, 0.12), hair_phase=r.uniform(0, 2 * np.pi),
        eye_dx=r.uniform(0.15, 0.26), eye_y=r.uniform(-0.2, -0.05), eye_w=r.uniform(0.07, 0.12),
        eye_h=r.uniform(0.035, 0.06),
        iris_r=iris[0], iris_g=iris[1], iris_b=iris[2],
        brow_dy=r.uniform(0.08, 0.16), brow_tilt=r.uniform(-0.35, 0.35), brow_thick=r.uniform(0.012, 0.035),
        nose_len=r.uniform(0.12, 0.26), nose_w=r.uniform(0.04, 0.09),
        mouth_y=r.uniform(0.3, 0.45), mouth_w=r.uniform(0.1, 0.2),
        lip_r=lip[0], lip_g=lip[1], lip_b=lip[2],
        beard=float(r.random() < 0.25), glasses=float(r.random() < 0.2),
    )
    shape = np.asarray([v[n] for n in _ID_FIELDS], np.float64)
    pattern = r.standard_normal(PATTERN_SIZE)
    return np.clip(np.concatenate([shape, pattern]), -5, 5)


def _image_nuisance(seed: int, identity: int, image: int) -> dict[str, Any]:
    r = np.random.default_rng([int(seed), 2, int(identity), int(image)])
    return dict(
        # Aligned crops: small residual pose (in face-height units: +-0.08 is about 1 pixel at 32x32).
        roll=r.normal(0, 0.08), scale=r.uniform(0.88, 1.0), tx=r.uniform(-0.08, 0.08),
        ty=r.uniform(-0.06, 0.06), yaw=r.uniform(-0.18, 0.18),
        light_dir=r.uniform(0, 2 * np.pi), light=r.uniform(0.0, 0.5), ambient=r.uniform(0.65, 1.1),
        tint=r.uniform(0.9, 1.1, 3),
        smile=r.uniform(-0.8, 1.2), mouth_open=r.uniform(0, 1) ** 2, eye_open=r.uniform(0.25, 1.0),
        brow_raise=r.uniform(-0.03, 0.05),
        bg=r.uniform(0, 1, 3), bg_grad=r.normal(0, 0.35, 3), bg_dir=r.uniform(0, 2 * np.pi),
        tex_freq=r.uniform(1.5, 6.0, 2), tex_phase=r.uniform(0, 2 * np.pi, 2), tex_amp=r.uniform(0, 0.25),
        shirt=r.uniform(0, 1, 3),
        occ=float(r.random() < 0.2), occ_xy=r.uniform(-0.8, 0.8, 2), occ_wh=r.uniform(0.1, 0.45, 2), occ_col=r.uniform(0, 1, 3),
        noise=r.uniform(0.01, 0.06), noise_seed=int(r.integers(0, 2**31 - 1)),
    )


def _pattern_field(pattern: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` values of each image's pattern at face coordinates ``u`` (across, mirrored)
    and ``v`` (down), both ``(N, H, W)`` or broadcastable, ``[-1, 1]`` over the face."""
    n = len(pattern)
    rows, cols = PATTERN_ROWS, PATTERN_HALF_COLS
    grid = pattern.reshape(n, rows, cols, 3).astype(np.float32)
    a = np.clip(np.abs(u) * cols - 0.5, 0, cols - 1)
    b = np.clip((v + 1) * 0.5 * rows - 0.5, 0, rows - 1)
    a, b = np.broadcast_arrays(a, b)
    j0, i0 = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    j1, i1 = np.minimum(j0 + 1, cols - 1), np.minimum(i0 + 1, rows - 1)
    wa, wb = (a - j0)[..., None], (b - i0)[..., None]
    k = np.arange(n)[:, None, None]
    top = (1 - wa) * grid[k, i0, j0] + wa * grid[k, i0, j1]
    bottom = (1 - wa) * grid[k, i1, j0] + wa * grid[k, i1, j1]
    return ((1 - wb) * top + wb * bottom).astype(np.float32)


def render_faces(params: np.ndarray, nuisance: Sequence[dict[str, Any]], size: Sequence[int]) -> np.ndarray:
    """Render ``(N, H, W, 3)`` uint8 images from identity ``params (N, P)`` and per-image nuisance."""
    h, w = as_size(size)
    n = len(params)
    P = {k: params[:, i][:, None, None].astype(np.float32) for k, i in _F.items()}
    Q = {k: np.asarray([d[k] for d in nuisance], np.float32) for k in nuisance[0] if k != "noise_seed"}
    noise_seeds = [d["noise_seed"] for d in nuisance]

    def q(name):
        v = Q[name]
        return v.reshape((n,) + (1,) * 2) if v.ndim == 1 else v

    ys = (np.arange(h) + 0.5) / h * 2 - 1
    xs = ((np.arange(w) + 0.5) / w * 2 - 1) * (w / h)
    ys, xs = ys.astype(np.float32), xs.astype(np.float32)
    X, Y = np.meshgrid(xs, ys)
    X, Y = X[None], Y[None]
    # Image -> face frame (inverse of rotate, scale, translate).
    c, s = np.cos(q("roll")), np.sin(q("roll"))
    dx, dy = X - q("tx"), Y - q("ty")
    fx = (c * dx + s * dy) / q("scale")
    fy = (-s * dx + c * dy) / q("scale")
    px = 2.0 / h / q("scale")  # one pixel in face units: edge softness
    edge = lambda d: _sig(-d / (0.7 * px))  # noqa: E731 - inside when d < 0

    yaw = q("yaw")
    ox = fx / (1 - 0.25 * np.abs(yaw))  # outline narrows with yaw
    feat_x = fx - 0.35 * yaw * P["face_w"]  # features slide towards the turned side

    def ellipse(x, y, cx, cy, a, b):
        return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1) * np.minimum(a, b)

    # Background: colour, gradient, low-frequency texture.
    g = np.cos(q("bg_dir")) * X + np.sin(q("bg_dir")) * Y
    tex = np.sin(X * Q["tex_freq"][:, 0, None, None] + Q["tex_phase"][:, 0, None, None]) * np.cos(
        Y * Q["tex_freq"][:, 1, None, None] + Q["tex_phase"][:, 1, None, None]
    )
    img = (Q["bg"][:, None, None, :] + g[..., None] * Q["bg_grad"][:, None, None, :] * 0.5 + (q("tex_amp") * tex)[..., None]).astype(np.float32)

    def paint(img, alpha, colour):
        """img <- img + alpha * (colour - img), in place, float32."""
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 2:
            colour = colour[:, None, None, :]
        alpha = alpha.astype(np.float32, copy=False)
        if not alpha.any():
            return img
        tmp = np.subtract(colour, img, dtype=np.float32)
        tmp *= alpha[..., None]
        img += tmp
        return img

    skin = np.stack([P["skin_r"], P["skin_g"], P["skin_b"]], -1)
    hair = np.stack([P["hair_r"], P["hair_g"], P["hair_b"]], -1)
    # Shoulders / shirt.
    img = paint(img, edge(ellipse(ox, fy, 0, 1.55, 1.1, 0.6)), Q["shirt"])
    # Neck.
    img = paint(img, edge(np.maximum(np.abs(ox) - 0.5 * P["face_w"], 0.55 - fy) * 1.0), skin * 0.85)
    # Hair volume behind the head, down to hair_len.
    hb = ellipse(ox, fy, 0, -0.12, P["face_w"] * P["hair_vol"], P["face_h"] * P["hair_vol"])
    hb = np.maximum(hb, fy - P["hair_len"])
    img = paint(img, edge(hb), hair)
    # Face outline: ellipse whose lower half is narrowed (jaw).
    jaw_scale = 1 - P["jaw"] * np.clip(fy / P["face_h"], 0, 1)
    face_d = ellipse(ox / jaw_scale, fy, 0, 0, P["face_w"], P["face_h"])
    face = edge(face_d)
    img = paint(img, face, skin)
    # Complexion pattern, on the skin under the features: the cell grid interpolated bilinearly in
    # face coordinates (columns by |x|: mirrored), so it follows the face's pose and shape.
    img += (face[..., None] * PATTERN_AMP) * _pattern_field(params[:, len(_ID_FIELDS):], feat_x / (P["face_w"] * jaw_scale), fy / P["face_h"])
    # Fringe: inside the face above a wavy hairline.
    line = P["hairline"] + P["hair_wave"] * np.sin(9 * feat_x + P["hair_phase"])
    img = paint(img, face * edge(fy - line), hair)
    # Beard.
    beard = face * edge(P["mouth_y"] - 0.12 - fy) * P["beard"]
    img = paint(img, beard * 0.85, hair * 0.8)
    # Eyes: sclera, iris, pupil; brows.
    iris = np.stack([P["iris_r"], P["iris_g"], P["iris_b"]], -1)
    for side in (-1.0, 1.0):
        ex = side * P["eye_dx"]
        eh = P["eye_h"] * q("eye_open")
        sclera = edge(ellipse(feat_x, fy, ex, P["eye_y"], P["eye_w"], eh))
        img = paint(img, sclera, np.array([0.95, 0.95, 0.92]))
        ir = edge(ellipse(feat_x, fy, ex, P["eye_y"], P["eye_h"] * 1.1, P["eye_h"] * 1.1)) * sclera
        img = paint(img, ir, iris)
        pu = edge(ellipse(feat_x, fy, ex, P["eye_y"], P["eye_h"] * 0.45, P["eye_h"] * 0.45)) * sclera
        img = paint(img, pu, np.array([0.03, 0.03, 0.03]))
        by = P["eye_y"] - P["brow_dy"] - q("brow_raise") + side * P["brow_tilt"] * (feat_x - ex)
        brow = edge(np.maximum(np.abs(feat_x - ex) - P["eye_w"] * 1.2, np.abs(fy - by) - P["brow_thick"]))
        img = paint(img, brow, hair * 0.7)
        rim = np.abs(ellipse(feat_x, fy, ex, P["eye_y"], P["eye_w"] * 1.5, P["eye_w"] * 1.2)) - 0.012
        img = paint(img, edge(rim) * P["glasses"], np.array([0.1, 0.1, 0.12]))
    # Nose: a shaded triangle-ish ellipse below the eyes.
    ny = P["eye_y"] + 0.5 * P["nose_len"] + 0.03
    nose = edge(ellipse(feat_x - 0.1 * yaw, fy, 0, ny, P["nose_w"], P["nose_len"] * 0.55))
    img = paint(img, nose * 0.6, skin * 0.7)
    # Mouth: lips between two parabolas, opening shows dark interior.
    mx = feat_x
    curve = -0.9 * q("smile") * (mx**2) / np.maximum(P["mouth_w"], 1e-3)
    mouth_c = P["mouth_y"] + curve
    half_open = 0.012 + 0.05 * q("mouth_open")
    lips = edge(np.maximum(np.abs(mx) - P["mouth_w"], np.abs(fy - mouth_c) - half_open - 0.022))
    img = paint(img, lips, np.stack([P["lip_r"], P["lip_g"], P["lip_b"]], -1))
    inner = edge(np.maximum(np.abs(mx) - P["mouth_w"] * 0.85, np.abs(fy - mouth_c) - half_open + 0.012))
    img = paint(img, inner, np.array([0.15, 0.04, 0.05]))
    # Lighting over the whole picture, then tint.
    ld = np.cos(q("light_dir")) * X + np.sin(q("light_dir")) * Y
    shade = q("ambient") + q("light") * ld
    img *= shade[..., None]
    img *= Q["tint"][:, None, None, :]
    # Occluder.
    occ_d = np.maximum(
        np.abs(X - Q["occ_xy"][:, 0, None, None]) - Q["occ_wh"][:, 0, None, None],
        np.abs(Y - Q["occ_xy"][:, 1, None, None]) - Q["occ_wh"][:, 1, None, None],
    )
    occ = _sig(-occ_d / (0.7 * 2.0 / h)) * q("occ")
    img = paint(img, occ, Q["occ_col"])
    # Noise (per-image stream so an image does not depend on its batch).
    for k, sd in enumerate(noise_seeds):
        img[k] += np.random.default_rng(int(sd)).standard_normal((h, w, 3), dtype=np.float32) * Q["noise"][k]
    img *= 255.0
    img += 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticFaces(FaceSource):
    """Synthetic identities as a grain source with the face record contract.

    Record ``i`` is image ``i % images_per_identity`` of identity ``i // images_per_identity``
    (identities are ints ``0..num_identities-1``, image ids ``syn<identity>_<image>``). ``render``
    draws many records at once (vectorised); ``images()`` renders all of them.
    """

    def __init__(self, num_identities: int, images_per_identity: int, size: Sequence[int] = (112, 112), seed: int = 0):
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError(
                f"SyntheticFaces needs num_identities >= 1 and images_per_identity >= 1; got "
                f"{num_identities}, {images_per_identity}"
            )
        self.num_identities, self.images_per_identity, self.seed = int(num_identities), int(images_per_identity), int(seed)
        n = self.num_identities * self.images_per_identity
        ids = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)
        names = [f"syn{k // self.images_per_identity:05d}_{k % self.images_per_identity:03d}" for k in range(n)]
        super().__init__(names, ids, size, name=f"Synthetic({num_identities}x{images_per_identity}, seed={seed})")
        self._params = np.stack([identity_parameters(self.seed, k) for k in range(self.num_identities)])

    @property
    def identity_params(self) -> np.ndarray:
        """``(num_identities, P)`` identity parameters."""
        return self._params

    def render(self, indices: Sequence[int] | np.ndarray, chunk: int = 64) -> np.ndarray:
        """Images of records ``indices`` as ``(len, H, W, 3)`` uint8."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        out = np.empty((idx.size,) + self.output_size + (3,), np.uint8)
        for s in range(0, idx.size, chunk):
            part = idx[s : s + chunk]
            ident, img = np.divmod(part, self.images_per_identity)
            nuis = [_image_nuisance(self.seed, a, b) for a, b in zip(ident, img)]
            out[s : s + chunk] = render_faces(self._params[ident], nuis, self.output_size)
        return out

    def images(self) -> np.ndarray:
        """All images ``(N, H, W, 3)``."""
        return self.render(np.arange(len(self)))

    def _load(self, i: int) -> np.ndarray:
        return self.render([i])[0]


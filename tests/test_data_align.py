"""Alignment: similarity fit, warp pixel convention, template sizes, real CelebA landmarks."""

import numpy as np
import pytest

from jaxforget.data import align


def _random_similarity(rng):
    ang, s = rng.uniform(-0.6, 0.6), rng.uniform(0.4, 2.5)
    r = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return np.hstack([r, rng.uniform(-30, 30, (2, 1))])


def test_similarity_recovers_exact_transform():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m_true = _random_similarity(rng)
        tmpl = align.template_for((112, 112))
        src = align.apply_transform(align.invert_affine(m_true), tmpl)
        m = align.similarity_transform(src, tmpl)
        np.testing.assert_allclose(m, m_true, atol=1e-8)
        np.testing.assert_allclose(align.apply_transform(m, src), tmpl, atol=1e-8)


def test_similarity_is_least_squares_optimum():
    """Against an independent linear least-squares solve of x' = a x - b y + tx, y' = b x + a y + ty."""
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = rng.uniform(0, 100, (5, 2))
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)[0]
    expected = np.array([[a, -b, tx], [b, a, ty]])
    np.testing.assert_allclose(align.similarity_transform(src, dst), expected, atol=1e-9)


def test_degenerate_landmarks_raise():
    with pytest.raises(ValueError, match="degenerate"):
        align.similarity_transform(np.ones((5, 2)), align.template_for((112, 112)))
    with pytest.raises(ValueError, match="shape"):
        align.similarity_transform(np.ones((5, 3)), np.ones((5, 2)))


def test_templates():
    t112 = align.template_for((112, 112))
    np.testing.assert_allclose(t112, align.ARCFACE_TEMPLATE_112)
    t96 = align.template_for((112, 96))
    np.testing.assert_allclose(t96[:, 0], align.ARCFACE_TEMPLATE_112[:, 0] - 8)
    np.testing.assert_allclose(t96[:, 1], align.ARCFACE_TEMPLATE_112[:, 1])
    t56 = align.template_for((56, 56))
    np.testing.assert_allclose((t56 + 0.5) * 2 - 0.5, t112)


def _blobs(points, hw, sigma=1.2):
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    img = np.zeros(hw)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _centroids(img, points, radius=5):
    img = img.astype(np.float64)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    out = []
    for x, y in points:
        w = img * (((xx - x) ** 2 + (yy - y) ** 2) <= radius**2)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.asarray(out)


@pytest.mark.parametrize("size", [(112, 112), (112, 96)])
def test_warp_puts_pixels_where_the_matrix_says(size):
    pts = np.array([[30.3, 40.2], [55.7, 42.1], [44.0, 60.5], [33.0, 75.0], [56.0, 76.0]])
    img = _blobs(pts, (109, 89))
    out, m = align.align_face(img, pts, size)
    assert out.shape == size and out.dtype == np.uint8
    expected = align.apply_transform(m, pts)
    np.testing.assert_allclose(_centroids(out, expected), expected, atol=0.15)


def test_fixed_crop_box_scales():
    assert align.fixed_crop_box((109, 89), (112, 96)) == pytest.approx((18, 28, 70, 88))
    assert align.fixed_crop_box((218, 178), (112, 96)) == pytest.approx((36, 56, 140, 176))
    left, top, right, bottom = align.fixed_crop_box((109, 89), (112, 112))
    assert (right - left) == pytest.approx(bottom - top) and (left + right) / 2 == pytest.approx(44)


@pytest.mark.real_data
def test_celeba_alignment_on_real_landmarks(shared):
    """Every CelebA subset face: the warp moves each landmark to the matrix's prediction (within
    1 px, on a drawn image), and on average the aligned eyes land within 1 px of the template."""
    from jaxforget.data.formats.celeba import read_celeba_landmarks

    table = read_celeba_landmarks(str(shared("data", "celeba_subset", "list_landmarks_align_celeba.txt")))
    lms = np.stack(list(table.values()))
    assert lms.shape == (10000, 5, 2)
    tmpl = align.template_for((112, 96))
    aligned = np.stack([align.apply_transform(align.similarity_transform(l, tmpl), l) for l in lms])
    mean_err = np.abs(aligned.mean(0) - tmpl)
    assert np.all(mean_err[:2] < 1.0), mean_err  # eyes
    assert np.all(np.linalg.norm(aligned.mean(0) - tmpl, axis=1) < 3.5), mean_err  # all five points
    for lm in lms[:: 500]:
        img = _blobs(lm, (109, 89))
        out, m = align.align_face(img, lm, (112, 96))
        expected = align.apply_transform(m, lm)
        np.testing.assert_allclose(_centroids(out, expected), expected, atol=1.0)


def test_vectorised_fit_matches_single_fit():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (50, 5, 2))
    dst = align.template_for((112, 96))
    many = align.similarity_transforms(src, dst)
    for k in range(50):
        np.testing.assert_allclose(many[k], align.similarity_transform(src[k], dst), atol=1e-9)
    bad = align.similarity_transforms(np.ones((1, 5, 2)), dst)
    assert np.isnan(bad).all()


def test_aligned_crop_box_follows_the_model_input():
    """Faces already aligned to the 112x112 template: a 112x96 input is its central 96 columns
    (the same template 8 px to the left: a crop, no resize), a 112x112 input the whole face, other
    sizes the box of the nearer aspect."""
    box = align.aligned_crop_box((112, 112), (112, 96))
    assert box == (8, 0, 104, 112)
    np.testing.assert_allclose(align.template_for((112, 96)) + box[:2], align.template_for((112, 112)))
    assert align.aligned_crop_box((112, 112), (112, 112)) == (0, 0, 112, 112)
    assert align.aligned_crop_box((224, 224), (56, 48)) == pytest.approx((16, 0, 208, 224))
    assert align.aligned_crop_box((224, 224), (32, 32)) == (0, 0, 224, 224)

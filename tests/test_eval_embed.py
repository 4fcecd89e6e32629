"""Embedding export: sharded jitted inference equals a numpy reference; masks; flips; npz."""

import jax
import numpy as np
import pytest

from jaxforget.eval.embed import Embeddings, Progress, embed

H, W, D = 8, 6, 5


def _linear_apply(v, x):
    return x.reshape(x.shape[0], -1) @ v["w"]


def _batches(images, labels, bs):
    out = []
    for s in range(0, len(images), bs):
        im, lab = images[s : s + bs], labels[s : s + bs]
        n = len(im)
        mask = np.arange(bs) < n
        pad = bs - n
        out.append({
            "image": np.concatenate([im, np.zeros((pad, H, W, 3), np.uint8)]),
            "label": np.concatenate([lab, np.zeros(pad, np.int32)]).astype(np.int32),
            "mask": mask,
            "index": np.concatenate([np.arange(s, s + n), np.zeros(pad, int)]).astype(np.int32),
        })
    return out


def _reference(images, w, mean, std, mode):
    x = (images.astype(np.float64) - mean) / std
    e = x.reshape(len(x), -1) @ w
    ef = x[:, :, ::-1].reshape(len(x), -1) @ w
    r = {"none": e, "add": e + ef, "concat": np.concatenate([e, ef], 1)}[mode]
    return r / np.linalg.norm(r, axis=1, keepdims=True)


@pytest.mark.parametrize("flip", ["add", "concat", "none"])
def test_embed_matches_numpy_and_drops_padding(flip):
    assert len(jax.devices()) == 4  # conftest's fake devices: batches really are sharded
    rng = np.random.default_rng(0)
    w = rng.normal(size=(H * W * 3, D)).astype(np.float32)
    images = rng.integers(0, 256, (11, H, W, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 11).astype(np.int32)
    # batch size 5 is not a multiple of 4 devices: padded internally, padding dropped
    out = embed(_linear_apply, {"w": w}, _batches(images, labels, 5), 127.5, 128.0, flip=flip, progress=False)
    ref = _reference(images, w, 127.5, 128.0, flip)
    assert out.emb.dtype == np.float32 and out.emb.shape == ref.shape
    np.testing.assert_allclose(out.emb, ref, atol=2e-5)
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_array_equal(out.image_ids, np.arange(11))
    np.testing.assert_allclose(np.linalg.norm(out.emb, axis=1), 1.0, atol=1e-5)


def test_progress_and_errors(capsys):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(H * W * 3, D)).astype(np.float32)
    images = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    embed(_linear_apply, {"w": w}, _batches(images, np.zeros(4, np.int32), 4), 0.0, 1.0, progress="test-set")
    assert "[test-set] 4 images" in capsys.readouterr().err
    bad = _batches(images, np.zeros(4, np.int32), 4)
    del bad[0]["mask"]
    with pytest.raises(KeyError, match="mask"):
        embed(_linear_apply, {"w": w}, bad, 0.0, 1.0, progress=False)
    bad = _batches(images, np.zeros(4, np.int32), 4)
    bad[0]["image"] = bad[0]["image"].astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        embed(_linear_apply, {"w": w}, bad, 0.0, 1.0, progress=False)


def test_progress_is_throttled():
    import io

    buf = io.StringIO()
    p = Progress("x", total=100, every_s=3600, stream=buf)
    for _ in range(50):
        p.update(2)
    p.close()
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 2 and "100/100" in lines[-1]


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    e = Embeddings(rng.normal(size=(6, 3)).astype(np.float32), np.arange(6), np.array(list("abcdef")))
    path = e.save(tmp_path / "sub" / "emb.npz")
    back = Embeddings.load(path)
    np.testing.assert_array_equal(back.emb, e.emb)
    np.testing.assert_array_equal(back.labels, e.labels)
    assert back.image_ids.tolist() == list("abcdef")
    np.savez(tmp_path / "bad.npz", emb=e.emb)
    with pytest.raises(ValueError, match="missing"):
        Embeddings.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="rows"):
        Embeddings(np.zeros((3, 2)), np.zeros(2), np.zeros(3))

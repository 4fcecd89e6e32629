"""Pipelines: P x K batches, flips, resumable iterator, padded eval, corrupt images."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxforget.data.formats.folder import FolderSource
from jaxforget.data.pipeline import PKSampler, eval_dataset, train_dataset
from jaxforget.data.source import ArraySource
from jaxforget.data.synthetic import SyntheticFaces


def _array_source(counts, size=(8, 6)):
    """Identity k has counts[k] images; image pixels encode the record index (to check flips)."""
    ids = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (len(ids),) + size + (3,), dtype=np.uint8)
    return ArraySource(imgs, ids.tolist()), imgs


def test_pk_batches_hold_k_images_of_p_identities():
    src, imgs = _array_source([5, 2, 7, 3, 4, 6, 1, 5])
    p, k = 3, 4
    ds = train_dataset(src, identities_per_batch=p, images_per_identity=k, seed=0, num_threads=1)
    it = iter(ds)
    seen = set()
    for _ in range(12):
        b = next(it)
        assert b["image"].shape == (p * k, 8, 6, 3) and b["image"].dtype == np.uint8
        assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32 and b["mask"].all()
        labels, counts = np.unique(b["label"], return_counts=True)
        assert len(labels) == p and (counts == k).all()
        np.testing.assert_array_equal(src.identities[b["index"]], b["label"])
        for lab in labels:  # distinct images when the identity has >= K, all images otherwise
            rows = b["index"][b["label"] == lab]
            n_id = int((src.identities == lab).sum())
            assert len(set(rows.tolist())) == min(k, n_id)
        # Images are the record's image, flipped or not.
        for img, r in zip(b["image"], b["index"]):
            assert np.array_equal(img, imgs[r]) or np.array_equal(img, imgs[r][:, ::-1])
        seen.update(b["label"].tolist())
    assert seen == set(range(8))  # every identity visited (epochs cover all identities)


def test_flips_happen_and_can_be_disabled():
    src, imgs = _array_source([6] * 4)
    b = next(iter(train_dataset(src, identities_per_batch=4, images_per_identity=6, seed=1, num_threads=1)))
    flipped = [not np.array_equal(img, imgs[r]) for img, r in zip(b["image"], b["index"])]
    assert 0 < sum(flipped) < len(flipped)
    b = next(iter(train_dataset(src, identities_per_batch=4, images_per_identity=6, seed=1, flip=False, num_threads=1)))
    assert all(np.array_equal(img, imgs[r]) for img, r in zip(b["image"], b["index"]))


def test_iterator_state_resumes_identically():
    src = SyntheticFaces(6, 4, (16, 16), seed=0)
    ds = train_dataset(src, identities_per_batch=2, images_per_identity=3, seed=5, num_threads=2)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = iter(train_dataset(src, identities_per_batch=2, images_per_identity=3, seed=5, num_threads=2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other = next(iter(train_dataset(src, identities_per_batch=2, images_per_identity=3, seed=6, num_threads=1)))
    first = next(iter(ds))
    assert not np.array_equal(other["index"], first["index"])


def test_train_labels_from_label_map_and_indices():
    src, _ = _array_source([3, 3, 3, 3])
    label_map = {0: 10, 2: 12, 3: 13}  # identity 1 is not in the map: dropped
    indices = np.arange(12)[::-1]
    it = iter(train_dataset(src, indices, identities_per_batch=3, images_per_identity=2, label_map=label_map, num_threads=1))
    for _ in range(4):
        b = next(it)
        assert set(b["label"].tolist()) == {10, 12, 13}
        assert not set(b["index"].tolist()) & {3, 4, 5}
    with pytest.raises(ValueError, match="P=5 distinct identities but the training set has 4"):
        train_dataset(src, identities_per_batch=5, images_per_identity=2)


def test_sampler_epochs_cover_identities():
    groups = [np.arange(k * 10, k * 10 + 3) for k in range(7)]
    s = PKSampler(groups, np.arange(7, dtype=np.int32), p=3, k=2, seed=0)
    assert s.batches_per_epoch == 2
    first_epoch = np.concatenate([s.batch_plan(b)[0] for b in range(2)])
    assert len(set(first_epoch.tolist())) == 6


@pytest.mark.parametrize("n,batch", [(10, 4), (8, 4), (3, 8)])
def test_eval_covers_every_image_once_padded_and_masked(n, batch):
    src, imgs = _array_source([n])
    src = ArraySource(imgs, list(range(n)))
    ev = eval_dataset(src, batch_size=batch, num_threads=2)
    batches = list(ev)
    assert len(batches) == len(ev) == -(-n // batch)
    idx = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(idx[mask], np.arange(n))  # in order, each once
    assert (idx[~mask] == -1).all() and mask.sum() == n
    for b in batches:
        assert b["image"].shape[0] == batch
        for img, r, m in zip(b["image"], b["index"], b["mask"]):
            assert np.array_equal(img, imgs[r]) if m else not img.any()
    # Second pass gives the same batches.
    again = np.concatenate([b["index"] for b in ev])
    np.testing.assert_array_equal(again, idx)


def test_corrupt_images_masked_in_eval_and_replaced_in_train(tmp_path, caplog):
    for ident in ("a", "b"):
        (tmp_path / ident).mkdir()
        for k in range(3):
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), 40 * k + 10, np.uint8)).save(buf, format="PNG")
            (tmp_path / ident / f"{k}.png").write_bytes(buf.getvalue())
    (tmp_path / "a" / "1.png").write_bytes(b"garbage")
    src = FolderSource(str(tmp_path), output_size=(20, 20))
    ev = eval_dataset(src, batch_size=4, num_threads=1)
    with caplog.at_level("WARNING"):
        batches = list(ev)
    mask = np.concatenate([b["mask"] for b in batches])
    idx = np.concatenate([b["index"] for b in batches])
    assert ev.skipped == [1] and mask.sum() == 5 and not mask[idx == 1].any()
    assert "skipped 1 unreadable" in caplog.text
    it = iter(train_dataset(src, identities_per_batch=2, images_per_identity=3, seed=0, num_threads=1))
    for _ in range(3):
        b = next(it)
        assert b["mask"].all() and 1 not in b["index"].tolist()
    assert "a/1.png" in src.failure_report()



@pytest.mark.real_data
def test_real_celeba_pk_pipeline(shared):
    from jaxforget.data.formats.celeba import CelebASource
    from jaxforget.data.splits import split_source

    src = CelebASource(str(shared("data", "celeba_subset")), output_size=(112, 96))
    split = split_source(src, num_forget=10, min_images=4, seed=0)
    it = iter(train_dataset(src, split.forget_train(), identities_per_batch=4, images_per_identity=2, label_map=split.class_index, seed=0))
    b = next(it)
    labels, counts = np.unique(b["label"], return_counts=True)
    assert len(labels) == 4 and (counts == 2).all()
    assert set(labels.tolist()) <= {split.class_index[v] for v in split.forget_ids}


@pytest.mark.slow
def test_multiprocessing_workers_give_the_same_stream():
    """Worker processes take whole batches in turn: same P x K batches as in-process, and resumable."""
    src = SyntheticFaces(6, 4, (16, 16), seed=0)
    kw = dict(identities_per_batch=2, images_per_identity=3, seed=5, num_threads=1)
    ref = iter(train_dataset(src, **kw))
    want = [next(ref) for _ in range(4)]
    it = iter(train_dataset(src, worker_count=2, **kw))
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    got.append(next(it))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["index"], w["index"])
        np.testing.assert_array_equal(g["image"], w["image"])
    again = iter(train_dataset(src, worker_count=2, **kw))
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["image"], want[3]["image"])


def test_orbax_checkpoint_of_the_iterator(tmp_path):
    """The iterator saved in an orbax CheckpointManager (as the runner does) resumes identically."""
    import grain
    import orbax.checkpoint as ocp

    src = SyntheticFaces(6, 4, (16, 16), seed=0)
    kw = dict(identities_per_batch=2, images_per_identity=3, seed=5, num_threads=1)
    it = iter(train_dataset(src, **kw))
    next(it), next(it)
    mgr = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True), item_names=("data_iter",))
    mgr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    want = [next(it) for _ in range(2)]
    fresh = iter(train_dataset(src, **kw))
    mgr.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    mgr.close()
    for w in want:
        got = next(fresh)
        np.testing.assert_array_equal(got["index"], w["index"])
        np.testing.assert_array_equal(got["image"], w["image"])

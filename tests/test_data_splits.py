"""Splits: determinism, disjointness, fractions, JSON round trip, errors with numbers."""

import json

import numpy as np
import pytest

from jaxforget.data.source import EmptyDatasetError
from jaxforget.data.splits import Split, SplitError, SplitFileError, make_split, split_source
from jaxforget.errors import UserError


def _identities():
    # identity k has k + 1 images (1..12), shuffled record order.
    ids = np.repeat(np.arange(12), np.arange(1, 13))
    return np.random.default_rng(3).permutation(ids)


def _check_partition(split, ids):
    forget, retain = set(split.forget_ids), set(split.retain_ids)
    assert not forget & retain
    for v in split.forget_ids + split.retain_ids:
        tr, te = set(split.train[v].tolist()), set(split.test[v].tolist())
        assert not tr & te
        assert tr | te == set(np.nonzero(ids == v)[0].tolist())
    all_f = np.concatenate([split.forget_train(), split.forget_test()])
    all_r = np.concatenate([split.retain_train(), split.retain_test()])
    assert not set(ids[all_f].tolist()) & set(ids[all_r].tolist())
    assert sorted(split.class_index.values()) == list(range(len(forget | retain)))


def test_split_deterministic_disjoint_and_fractions():
    ids = _identities()
    a = make_split(ids, num_forget=3, min_images=6, train_fraction=0.5, seed=7)
    b = make_split(ids.copy(), num_forget=3, min_images=6, train_fraction=0.5, seed=7)
    assert a == b
    c = make_split(ids, num_forget=3, min_images=6, train_fraction=0.5, seed=8)
    assert c.forget_ids != a.forget_ids or any(not np.array_equal(a.train[v], c.train[v]) for v in a.forget_ids)
    _check_partition(a, ids)
    counts = {v: int((ids == v).sum()) for v in np.unique(ids).tolist()}
    for v in a.forget_ids:
        assert counts[v] >= 6
        assert len(a.train[v]) == round(0.5 * counts[v])
    assert len(a.forget_ids) == 3 and len(a.retain_ids) == 9
    assert a.class_index == {v: k for k, v in enumerate(range(12))}
    # The one-image identity is a retain identity with a train image only.
    assert len(a.train[0]) == 1 and len(a.test[0]) == 0
    np.testing.assert_array_equal(a.labels([0, 11, 99]), [0, 11, -1])


def test_a_halves_seed_cuts_every_person_alike_whoever_is_forgotten():
    ids = _identities()
    a = make_split(ids, num_forget=3, min_images=6, seed=0, halves_seed=5)
    b = make_split(ids, num_forget=3, min_images=6, seed=1, halves_seed=5)
    assert a.forget_ids != b.forget_ids
    assert a.training_set() == b.training_set()  # one base model fine-tuned on it serves both
    assert a.to_json() != b.to_json()
    _check_partition(b, ids)
    # Without it, the halves follow the seed (and the split file is the one of earlier runs).
    c = make_split(ids, num_forget=3, min_images=6, seed=1)
    assert c.training_set() != b.training_set() and "halves_seed" not in c.params
    assert c.forget_ids == b.forget_ids


def test_explicit_forget_ids_and_num_retain():
    ids = _identities()
    s = make_split(ids, forget_ids=[5, "9"], min_images=2, seed=0, retain_min_images=3, num_retain=4, train_fraction=0.25)
    assert s.forget_ids == (5, 9)
    assert len(s.retain_ids) == 4 and all((ids == v).sum() >= 3 for v in s.retain_ids)
    assert len(s.train[9]) == round(0.25 * 10)
    _check_partition(s, ids)


def test_json_round_trip(tmp_path):
    ids = np.array(["b", "a", "a", "c", "b", "a", "c", "c"])
    s = make_split(ids, num_forget=1, min_images=2, seed=1, image_ids=[f"x{k}" for k in range(8)])
    path = tmp_path / "split.json"
    s.save(path)
    t = Split.load(path)
    assert t == s and t.forget_ids == s.forget_ids and t.class_index == {"a": 0, "b": 1, "c": 2}
    np.testing.assert_array_equal(t.forget_test(), s.forget_test())


def test_errors_carry_numbers():
    ids = _identities()
    with pytest.raises(SplitError, match=r"forget identity 42 is not in the dataset \(12 identities over 78 records"):
        make_split(ids, forget_ids=[42])
    with pytest.raises(SplitError, match=r"forget identity 1 has 2 image\(s\).*min_images=4"):
        make_split(ids, forget_ids=[1], min_images=4)
    with pytest.raises(SplitError, match=r"asked for 5 forget identities with >= 10 images, but only 3 of 12"):
        make_split(ids, num_forget=5, min_images=10)
    with pytest.raises(EmptyDatasetError):
        make_split([], num_forget=1)
    with pytest.raises(SplitError, match="exactly one"):
        make_split(ids)


def test_split_source_checks_fingerprint():
    from jaxforget.data.synthetic import SyntheticFaces

    src = SyntheticFaces(6, 3, (16, 16), seed=0)
    s = split_source(src, num_forget=2, min_images=3)
    s.check_source(src)
    with pytest.raises(SplitError, match="18 records"):
        s.check_source(SyntheticFaces(5, 3, (16, 16)))


@pytest.mark.real_data
def test_real_celeba_split(shared):
    from jaxforget.data.formats.celeba import CelebASource

    src = CelebASource(str(shared("data", "celeba_subset")), output_size=(112, 96))
    a = split_source(src, num_forget=10, min_images=5, seed=0)
    b = split_source(src, num_forget=10, min_images=5, seed=0)
    assert a == b
    _check_partition(a, src.identities)
    assert len(a.forget_ids) == 10 and a.num_classes == len(src.unique_identities())
    assert len(a.forget_train()) + len(a.forget_test()) == sum(int((src.identities == v).sum()) for v in a.forget_ids)


def test_unreadable_split_files_name_the_file(tmp_path):
    """Before (found by tests/test_fuzz_*.py): json's errors, AttributeError (a JSON list),
    OverflowError (an index past 64 bits) and TypeError (a list as identity) escaped, and a split
    with out-of-range indices or identities missing from its classes loaded and failed later."""
    good = make_split(_identities(), num_forget=2, seed=0).to_json()

    def edited(**fields):
        return json.dumps({**good, **fields})

    first_train = good["train"][0][0]
    cases = [
        (b"\x80", r"not a JSON split file \(UnicodeDecodeError"),
        ("[]", "a split file holds a JSON object, not a list"),
        (edited(train=[[first_train, [2**70]]] + good["train"][1:]), "field 'train' should hold"),
        (edited(test=[[good["test"][0][0], [len(_identities())]]] + good["test"][1:]), "field 'test' should hold"),
        (edited(train=[[[1], [0]]] + good["train"][1:]), "field 'train' should hold"),
        (edited(forget_ids="ab"), "field 'forget_ids' should be a list of identities"),
        (edited(class_index=good["class_index"][1:]), "inconsistent split"),
        (edited(num_records=-1), "field 'num_records' should be a record count"),
    ]
    path = tmp_path / "split.json"
    for text, message in cases:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(SplitFileError, match=rf"^{path}: .*{message}.*; delete it to make the split again$"):
            Split.load(path)
    assert issubclass(SplitFileError, SplitError) and issubclass(SplitFileError, UserError)

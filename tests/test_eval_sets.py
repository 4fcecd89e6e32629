"""The runner's evaluation sets (jaxforget/eval/sets.py): which are built, distractors, storage."""

import numpy as np
import pytest

from jaxforget.data import splits, synthetic
from jaxforget.data.formats.celeba_wild import CelebAWildSource
from jaxforget.data.formats.cfp import CFPSource, read_cfp_pairs
from jaxforget.data.formats.folder import FolderSource
from jaxforget.errors import UserError
from jaxforget.eval import protocols, sets
from jaxforget.eval.embed import Embeddings

from runner_fixtures import tiny_config
from tests.data_fixtures import cfp_tree, encode, random_image


def test_other_identity_distractors_are_outside_the_split():
    c = tiny_config()
    c.data.distractors, c.data.num_distractors = "other_identities", 7
    source = synthetic.SyntheticFaces(16, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=4, min_images=4, num_retain=8, seed=0)
    d = sets.build_distractors(c, source, split, c.model.input_size)
    assert len(d) == 7
    assert not set(d.identities.tolist()) & set(split.forget_ids + split.retain_ids)
    c.data.num_distractors = 0  # all of them: the 4 identities outside the split x 6 images
    assert len(sets.build_distractors(c, source, split, c.model.input_size)) == 24
    full = splits.make_split(source.identities, num_forget=4, min_images=4, seed=0)
    with pytest.raises(UserError, match="every image belongs to a person of the experiment"):
        sets.build_distractors(c, source, full, c.model.input_size)


def test_needed_sets_are_the_core_sets_then_what_the_protocols_read():
    assert sets.needed_sets(("forget_base", "retain_search")) == sets.CORE_SETS
    assert sets.needed_sets(("retain_search:retain_all", "forget_extended", "reid_audit")) == (
        sets.CORE_SETS + ("distractors", "retain_all"))
    with pytest.raises(UserError, match=r"config field evals: unknown protocol 'forget_bsae'"):
        sets.needed_sets(("forget_bsae",))


@pytest.mark.parametrize("name", sorted(protocols.PROTOCOLS))
def test_every_protocol_is_buildable_by_the_runner_or_refused_in_one_line(name):
    """Each record's sets either all have a builder (and then building exactly those sets lets
    the protocol run), or the runner names the protocol and the set it cannot build."""
    protocol = protocols.PROTOCOLS[name]
    buildable = ((protocol.kind is Embeddings or protocol.needs())
                 and all(s in sets.SET_BUILDERS for s in protocol.reads()))
    if not buildable:
        with pytest.raises(UserError) as e:
            sets.needed_sets((name,))
        msg = str(e.value)
        assert "\n" not in msg and repr(name) in msg
        missing = [s for s in protocol.reads() if s not in sets.SET_BUILDERS]
        assert protocol.kind is not Embeddings or repr(missing[0]) in msg
        return
    names = sets.needed_sets((name,))
    assert set(protocol.reads()) <= set(names)
    rng = np.random.default_rng(0)
    fake = {}
    for i, n in enumerate(names):  # forget identities 0..3, retain 4..7, distractors -1
        if sets.SET_BUILDERS[n].join:  # pairs: 10 folds of one same and one different pair
            emb = rng.normal(size=(40, 8))
            fake[n] = protocols.PairSet(emb / np.linalg.norm(emb, axis=1, keepdims=True),
                                        np.arange(20) % 2 == 0, np.arange(20) // 2)
            continue
        labels = {"forget": np.repeat(np.arange(4), 3), "retain": np.repeat(np.arange(4, 8), 3),
                  "distractors": np.full(6, -1), "cfp": np.repeat(np.arange(4), 3)}[n.split("_")[0]]
        emb = rng.normal(size=(len(labels), 8))
        fake[n] = Embeddings(emb / np.linalg.norm(emb, axis=1, keepdims=True), labels,
                             np.arange(len(labels)) + 100 * i)
    assert protocols.run_protocols((name,), fake)  # no set missing


def test_protocols_needing_sets_without_a_builder_are_refused():
    with pytest.raises(UserError, match=r"protocol 'forget_extended:ijbb' needs the set 'ijbb', "
                                        r"which this runner has no builder for"):
        sets.needed_sets(("forget_base", "forget_extended:ijbb"))
    with pytest.raises(UserError, match=r"protocol 'retain_search:orl' needs the set 'orl'"):
        sets.needed_sets(("retain_search:orl",))
    with pytest.raises(UserError, match=r"protocol 'verification' reads every verification pack "
                                        r"of data.verification_bins, which is empty"):
        sets.needed_sets(("verification",))


def test_embedded_sets_are_stored_and_reloaded(tmp_path, monkeypatch):
    c = tiny_config()
    c.cache_dir = str(tmp_path / "cache")
    source = synthetic.SyntheticFaces(16, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=4, min_images=4, num_retain=8, seed=0)
    calls = []

    def fake_embed(bundle, variables, batches, **kw):
        calls.append(kw["progress"])
        n = batches.num_images
        return Embeddings(np.eye(n, 4, dtype=np.float32), np.zeros(n, np.int32), np.arange(n))

    monkeypatch.setattr(sets, "embed_model", fake_embed)
    names = sets.needed_sets(("retain_search:retain_all",))
    first = {}
    for state in ("original", "unlearned"):
        out = sets.embed_sets(c, None, None, source, split, names, None, tmp_path / "run", state)
        assert len(out["retain_all"]) == len(out["retain_train"]) + len(out["retain_test"])
        first[state] = out
    assert calls == [f"[{s}] embed {n}" for s in ("original", "unlearned") for n in sets.CORE_SETS]
    stored = sorted(p.name for p in (tmp_path / "run" / "embeddings").iterdir())
    assert stored == sorted(f"unlearned_{n}.npz" for n in sets.CORE_SETS)  # no partial file
    (key,) = list((tmp_path / "cache" / "embeddings").iterdir())
    assert sorted(p.name for p in key.iterdir()) == sorted(f"{n}.npz" for n in sets.CORE_SETS)
    again = sets.embed_sets(c, None, None, source, split, names, None, tmp_path / "run", "original")
    assert len(calls) == 8  # reloaded, nothing embedded
    for n in names:
        np.testing.assert_array_equal(again[n].emb, first["original"][n].emb)
        np.testing.assert_array_equal(again[n].image_ids, first["original"][n].image_ids)


def test_imprinted_head_is_the_normalised_class_mean():
    e = Embeddings(np.array([[1.0, 0], [0, 1], [0, 2]], np.float32), np.array([0, 0, 1]),
                   np.arange(3))
    w = sets.imprint_head([e], num_classes=3, dim=2)
    np.testing.assert_allclose(w[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0, 1])
    assert np.isclose(np.linalg.norm(w[2]), 1.0)  # no train image: a random unit direction


def _image_code_embed(bundle, variables, batches, **kw):
    """A stand-in for the model: each image's embedding is its mean colour."""
    embs, labels, ids = [], [], []
    for b in batches:
        m = np.asarray(b["mask"], bool)
        embs.append(np.asarray(b["image"], np.float32)[m].mean(axis=(1, 2)))
        labels.append(np.asarray(b["label"])[m])
        ids.append(np.asarray(b["index"])[m])
    return Embeddings(np.concatenate(embs), np.concatenate(labels), np.concatenate(ids))


def test_cfp_sets_come_from_data_cfp_root_with_the_official_pairs(tmp_path, monkeypatch):
    root = tmp_path / "cfp"
    cfp_tree(root)
    c = tiny_config()
    c.data.cfp_root = str(root)
    assert sets.needed_sets(("cfp_fp_verification",)) == sets.CORE_SETS + (
        "cfp_frontal", "cfp_profile", "cfp_fp_pairs")
    assert sets.needed_sets(("cfp_ff_verification", "cfp_fp")) == sets.CORE_SETS + (
        "cfp_frontal", "cfp_profile", "cfp_ff_pairs")
    monkeypatch.setattr(sets, "embed_model", _image_code_embed)
    source = synthetic.SyntheticFaces(16, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=4, min_images=4, num_retain=8, seed=0)
    evals = ("cfp_fp", "cfp_fp_verification", "cfp_ff_verification")
    out = sets.embed_sets(c, None, None, source, split, sets.needed_sets(evals), None,
                          tmp_path / "run", "unlearned")
    code = {}
    for pose in ("frontal", "profile"):
        src = CFPSource(str(root), c.model.input_size, poses=(pose,))
        code.update({i: src[k]["image"].astype(np.float32).mean((0, 1)) for k, i in enumerate(src.image_ids)})
        assert out[f"cfp_{pose}"].labels.tolist() == src.identities.astype(int).tolist()
    for protocol in ("FP", "FF"):
        pairs, ref = out[f"cfp_{protocol.lower()}_pairs"], read_cfp_pairs(str(root), protocol)
        np.testing.assert_array_equal(pairs.emb[0::2], [code[i] for i in ref.first])
        np.testing.assert_array_equal(pairs.emb[1::2], [code[i] for i in ref.second])
        assert pairs.issame.tolist() == ref.issame.tolist() and pairs.folds.tolist() == ref.folds.tolist()
    results = protocols.run_protocols(evals, out)
    assert results["cfp_fp_verification"]["num_folds"] == 2
    assert results["cfp_ff_verification"]["num_pairs"] == len(read_cfp_pairs(str(root), "FF"))
    assert results["cfp_fp"]["num_queries"] == 4 and results["cfp_fp"]["gallery_size"] == 2


def test_distractors_from_another_data_set_leave_out_its_people(tmp_path):
    for tree, people in (("main", "ab"), ("other", "acd")):
        for person in people:
            (tmp_path / tree / person).mkdir(parents=True)
            for k in range(2):
                img = random_image(ord(person) * 10 + k, (20, 20))
                (tmp_path / tree / person / f"{k}.png").write_bytes(encode(img, "PNG"))
    c = tiny_config()
    c.data.distractors = f"folder:{tmp_path / 'other'}"
    main = FolderSource(str(tmp_path / "main"), (16, 16))
    d = sets.build_distractors(c, main, None, (16, 16))
    assert sorted(d.identities.tolist()) == ["c", "c", "d", "d"]
    c.data.num_distractors = 3
    assert len(sets.build_distractors(c, main, None, (16, 16))) == 3
    c.data.distractors = f"folder:{tmp_path / 'main'}"
    with pytest.raises(UserError, match="every image belongs to a person of the experiment"):
        sets.build_distractors(c, main, None, (16, 16))
    assert sets.distractor_spec("celeba:/data/celeba") == ("celeba", "/data/celeba")
    assert sets.distractor_spec("/data/ijbb") == ("images", "/data/ijbb")
    assert sets.distractor_spec("other_identities") == ("other_identities", "")


@pytest.mark.real_data
def test_celeba_subset_people_outside_celeba_wild_as_distractors(shared):
    wild = CelebAWildSource(str(shared("data", "celeba_wild")), (112, 96))
    subset = shared("data", "celeba_subset")
    c = tiny_config()
    c.data.distractors = f"celeba:{subset}"
    d = sets.build_distractors(c, wild, None, (112, 96))
    people = set(wild.identities.tolist())
    listed = [int(ln.split()[1]) for ln in (subset / "identity_CelebA.txt").read_text().splitlines() if ln.strip()]
    assert len(d) == sum(i not in people for i in listed) and not set(d.identities.tolist()) & people


def test_verification_packs_are_sets_of_the_config(tmp_path):
    """Each pack of data.verification_bins gives '<stem>_images' (embedded, stored) and '<stem>'
    (its pairs); plain 'verification' reads every pack; a pair missing an image is left out."""
    c = tiny_config()
    c.data.verification_bins = (str(tmp_path / "lfw.bin"), str(tmp_path / "agedb_30.bin"))
    builders = sets.set_builders(c)
    assert set(builders) - set(sets.SET_BUILDERS) == {"lfw", "lfw_images", "agedb_30", "agedb_30_images"}
    assert sets.needed_sets(("verification:lfw",), builders) == sets.CORE_SETS + ("lfw_images", "lfw")
    every = sets.needed_sets(("forget_base", "verification"), builders)
    assert every[len(sets.CORE_SETS):] == ("lfw_images", "lfw", "agedb_30_images", "agedb_30")
    # Records 0..5 (pairs 0, 1, 2); record 3 did not decode: pair 1 is left out.
    issame = np.array([1, 1, 0, 0, 1, 1])
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    kept = np.array([0, 1, 2, 4, 5])
    images = Embeddings(emb[kept], issame[kept], kept)
    pairs = builders["lfw"].join(c, [images])
    assert isinstance(pairs, protocols.PairSet)
    np.testing.assert_array_equal(pairs.emb, emb[[0, 1, 4, 5]])
    np.testing.assert_array_equal(pairs.issame, [True, True])

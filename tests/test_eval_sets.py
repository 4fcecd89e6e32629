"""The runner's evaluation sets (jaxforget/eval/sets.py): which are built, distractors, storage."""

import numpy as np
import pytest

from jaxforget.data import splits, synthetic
from jaxforget.errors import UserError
from jaxforget.eval import protocols, sets
from jaxforget.eval.embed import Embeddings

from runner_fixtures import tiny_config


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
    with pytest.raises(UserError, match="every image of the data set belongs"):
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
    buildable = (protocol.kind is Embeddings
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
        labels = {"forget": np.repeat(np.arange(4), 3), "retain": np.repeat(np.arange(4, 8), 3),
                  "distractors": np.full(6, -1)}[n.split("_")[0]]
        emb = rng.normal(size=(len(labels), 8))
        fake[n] = Embeddings(emb / np.linalg.norm(emb, axis=1, keepdims=True), labels,
                             np.arange(len(labels)) + 100 * i)
    assert protocols.run_protocols((name,), fake)  # no set missing


def test_protocols_needing_sets_without_a_builder_are_refused():
    with pytest.raises(UserError, match=r"protocol 'cfp_fp' needs the set 'cfp_frontal', which "
                                        r"this runner has no builder for"):
        sets.needed_sets(("forget_base", "cfp_fp"))
    with pytest.raises(UserError, match=r"protocol 'retain_search:orl' needs the set 'orl'"):
        sets.needed_sets(("retain_search:orl",))
    with pytest.raises(UserError, match=r"protocol 'verification' reads PairSet sets"):
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

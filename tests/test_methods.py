"""Tests of the unlearning methods (update rules, SalUn, Boundary Shrink, Gradient Ascent).

A tiny flax conv net with BatchNorm stands in for the real backbones (same ``apply`` contract:
``train=True`` with ``mutable=['batch_stats']`` returns ``(emb, {'batch_stats': ...})``).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget import losses
from jaxforget import methods as M

H = W = 8
D = 8
C = 6


class TinyNet(nn.Module):
    """strided conv-BN-relu, global pool, dense: the smallest face-embedder stand-in."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return nn.Dense(D)(jnp.mean(x, axis=(1, 2)))


def _key(seed: int) -> jax.Array:
    """Training-state keys use the 'rbg' PRNG: same semantics, much faster to compile on CPU."""
    return jax.random.key(seed, impl="rbg")


def _setup(seed: int = 0):
    net = TinyNet()
    variables = net.init(jax.random.key(seed), jnp.zeros((1, H, W, 3)), train=False)
    head = jax.random.normal(jax.random.key(seed + 1), (C, D))
    ctx = M.Context(apply_fn=net.apply, pixel_mean=127.5, pixel_std=127.5, num_classes=C)
    return net, variables, head, ctx


def _part(seed: int, labels) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int32)
    img = rng.integers(0, 256, (len(labels), H, W, 3), dtype=np.uint8)
    return {"image": img, "label": labels}


FORGET = [0, 0, 1, 1, 2, 2, 3, 3]
RETAIN = [4, 4, 5, 5]


def _batch(method, cfg, seed=0):
    full = {"forget": _part(seed, FORGET), "retain": _part(seed + 100, RETAIN)}
    return {k: full[k] for k in method.data_needs(cfg)}


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match="hard_disp") as err:
        M.get_method("hard_dispersion_typo")
    assert "unknown method" in str(err.value)


def test_bad_config_value_names_field():
    with pytest.raises(ValueError, match="method.optimizer"):
        M.resolve_hparams({"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="method.salun_fraction"):
        M.resolve_hparams({"salun_fraction": 1.5})


@pytest.mark.parametrize("name", sorted(n for n, m in M.METHODS.items() if not m.closed_form))
def test_every_method_runs_jitted_steps(name):
    """Two donated jitted steps: finite metrics, the backbone and BN statistics move (default
    bn_mode='train'), the head moves only for the methods that train it."""
    method = M.get_method(name)
    _, variables, head, ctx = _setup()
    cfg = {"lr": 1e-2, "steps": 10, "lipschitz_draws": 2, "salun_fraction": 0.0}
    if name == "rl":
        cfg["retain_weight"] = 0.5
    state = M.init_state(method, cfg, variables, head, _key(1))
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(2):
        state, metrics = update(state, _batch(method, cfg, seed=step))
        for key in ("loss", "grad_norm", "lr"):
            assert key in metrics, (name, sorted(metrics))
        assert all(np.isfinite(float(v)) for v in metrics.values()), (name, metrics)
    assert int(state.step) == 2

    def changed(a, b):
        return any(not np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert changed(variables["params"], state.params), f"{name}: no parameter changed"
    assert changed(variables["batch_stats"], state.batch_stats), f"{name}: BN stats frozen"
    assert changed(head, state.head) == method.trains_head, name


def test_closed_form_method_has_no_update_step():
    with pytest.raises(ValueError, match="closed-form"):
        M.make_update_step(M.get_method("project"), {}, M.Context(apply_fn=None))


def test_missing_batch_key_is_a_clear_error():
    method = M.get_method("contrastive")
    _, variables, head, ctx = _setup()
    state = M.init_state(method, {}, variables, head, _key(0))
    update = M.make_update_step(method, {}, ctx)
    with pytest.raises(ValueError, match=r"needs batch\['retain'\]"):
        update(state, {"forget": _part(0, FORGET)})


def test_frozen_bn_mode_keeps_running_statistics():
    """bn_mode='frozen' (the 'train' case is checked for every method above)."""
    _, variables, head, ctx = _setup()
    method = M.get_method("disp")
    cfg = {"bn_mode": "frozen", "lr": 1e-2}
    state = M.init_state(method, cfg, variables, head, _key(0))
    state, _ = jax.jit(M.make_update_step(method, cfg, ctx))(state, _batch(method, cfg))
    chex.assert_trees_all_equal(state.batch_stats, variables["batch_stats"])


def test_schedules_follow_config():
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "cosine", "steps": 100, "warmup_steps": 10})
    sched = M.make_schedule(hp)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-6)
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 100,
                            "step_boundaries": (0.5,), "step_factor": 0.1})
    sched = M.make_schedule(hp)
    assert float(sched(49)) == 1.0
    np.testing.assert_allclose(float(sched(51)), 0.1, rtol=1e-6)
    # A boundary inside the warm-up applies from its end; the later one still applies.
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 100, "warmup_steps": 60,
                            "step_boundaries": (0.5, 0.75), "step_factor": 0.1})
    sched = M.make_schedule(hp)
    np.testing.assert_allclose([float(sched(s)) for s in (30, 60, 74, 75, 99)],
                               [0.5, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    # Boundaries that round to the same step multiply.
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 2,
                            "step_boundaries": (0.5, 0.6), "step_factor": 0.1})
    np.testing.assert_allclose(float(M.make_schedule(hp)(1)), 0.01, rtol=1e-6)


def test_salun_masked_elements_bit_identical_after_many_steps():
    """Weight decay + momentum + Adam-free SGD for 30 steps: masked-out weights never move."""
    _, variables, head, ctx = _setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05, "salun_fraction": 0.3, "steps": 30}
    state = M.init_state(method, cfg, variables, head, _key(0))
    mask = M.compute_saliency_mask(method, ctx, state, [_part(s, FORGET) for s in range(3)],
                                   0.3, loss="dispersion")
    n_kept = sum(int(np.sum(m)) for m in jax.tree.leaves(mask))
    n_all = sum(int(np.size(m)) for m in jax.tree.leaves(mask))
    assert n_kept == int(np.ceil(0.3 * n_all))
    state = M.init_state(method, cfg, variables, head, _key(0), saliency_mask=mask)
    # The mask is state, not a compile-time constant: it is an input leaf of the jitted step.
    stored = M.get_saliency_mask(state.opt_state)
    assert jax.tree.structure(stored) == jax.tree.structure(mask)
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(30):
        state, metrics = update(state, _batch(method, cfg, seed=step))
    start = jax.tree.leaves(variables["params"])
    end = jax.tree.leaves(state.params)
    masks = jax.tree.leaves(mask)
    moved_kept = 0
    for a, b, m in zip(start, end, masks):
        a, b, m = np.asarray(a), np.asarray(b), np.asarray(m)
        assert np.array_equal(a[~m].view(np.uint32), b[~m].view(np.uint32))
        moved_kept += int(np.sum(a[m] != b[m]))
    assert moved_kept > 0.5 * n_kept, "the unmasked elements should train"


def _bits(tree):
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", ["hard_disp", "finetune"])
def test_trainable_pattern_freezes_every_other_leaf_bit_identically(name):
    """method.trainable='Dense_0/': with weight decay, momentum and train-mode BatchNorm, the conv
    and BatchNorm leaves (parameters and running statistics) never move; the dense layer, and the
    head for head-training methods, do."""
    _, variables, head, ctx = _setup()
    method = M.get_method(name)
    cfg = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05, "bn_mode": "train",
           "trainable": "Dense_0/"}
    state = M.init_state(method, cfg, variables, head, _key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(10):
        state, _ = update(state, _batch(method, cfg, seed=step))
    params = variables["params"]
    for frozen in ("Conv_0", "BatchNorm_0"):
        chex.assert_trees_all_equal(_bits(state.params[frozen]), _bits(params[frozen]))
    chex.assert_trees_all_equal(state.batch_stats, variables["batch_stats"])
    assert not np.allclose(state.params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert (not np.allclose(state.head, head)) == method.trains_head


def test_trainable_pattern_leaves_the_trained_leaves_gradient_unchanged():
    """One plain-SGD step: the dense layer moves exactly as it does when everything trains."""
    _, variables, head, ctx = _setup()
    method = M.get_method("hard_disp")
    base = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "bn_mode": "frozen"}
    out = {}
    for pattern in ("", "Dense_0/"):
        cfg = dict(base, trainable=pattern)
        state = M.init_state(method, cfg, variables, head, _key(0))
        out[pattern], _ = jax.jit(M.make_update_step(method, cfg, ctx))(
            state, _batch(method, cfg))
    chex.assert_trees_all_close(out["Dense_0/"].params["Dense_0"], out[""].params["Dense_0"],
                                rtol=1e-6, atol=1e-7)
    assert not np.allclose(out[""].params["Conv_0"]["kernel"],
                           variables["params"]["Conv_0"]["kernel"])


def test_salun_with_trainable_ranks_only_the_trainable_leaves():
    """salun_fraction is a fraction of the trainable elements; frozen leaves are never kept."""
    _, variables, head, ctx = _setup()
    method = M.get_method("hard_disp")
    cfg = {"trainable": "Dense_0/", "salun_fraction": 0.5}
    state = M.init_state(method, cfg, variables, head, _key(0))
    mask = M.compute_saliency_mask(method, ctx, state, [_part(0, FORGET)], 0.5,
                                   loss="dispersion", method_cfg=cfg)["params"]
    n_dense = sum(int(np.size(x)) for x in jax.tree.leaves(variables["params"]["Dense_0"]))
    n_kept = sum(int(np.sum(m)) for m in jax.tree.leaves(mask["Dense_0"]))
    assert n_kept == int(np.ceil(0.5 * n_dense))
    for frozen in ("Conv_0", "BatchNorm_0"):
        assert not any(bool(np.any(m)) for m in jax.tree.leaves(mask[frozen]))


@pytest.mark.parametrize("pattern, message", [("Dense_0/(", "not a valid regular expression"),
                                              ("linear1/", "matches no backbone parameter")])
def test_bad_trainable_pattern_names_the_field(pattern, message):
    _, variables, head, _ = _setup()
    with pytest.raises(ValueError, match=message) as err:
        M.init_state(M.get_method("hard_disp"), {"trainable": pattern}, variables, head, _key(0))
    assert "method.trainable" in str(err.value)


def test_salun_mask_swap_does_not_retrace():
    _, variables, head, ctx = _setup()
    method = M.get_method("disp")
    cfg = {"salun_fraction": 0.5}
    state = M.init_state(method, cfg, variables, head, _key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    batch = _batch(method, cfg)
    update(state, batch)
    flipped = jax.tree.map(lambda m: ~m, M.get_saliency_mask(state.opt_state))
    state2 = state.replace(opt_state=M.set_saliency_mask(state.opt_state, flipped))
    update(state2, batch)
    assert update._cache_size() == 1


def test_boundary_shrink_label_never_true_label():
    net, variables, head, ctx = _setup()
    frozen = lambda x: net.apply(variables, x, train=False)  # noqa: E731
    for seed in range(5):
        part = _part(seed, np.arange(24) % C)
        x = M.normalize_images(jnp.asarray(part["image"]), ctx)
        y_nb = losses.boundary_shrink_labels(frozen, x, head, part["label"], 0.1,
                                             clip=(-1.0, 1.0))
        assert not np.any(np.asarray(y_nb) == part["label"])
        # It is the nearest wrong class of the adversarial image, not just any wrong class.
        x_adv = losses.fgsm(frozen, x, head, part["label"], 0.1, clip=(-1.0, 1.0))
        cos = np.array(losses.cosine_logits(frozen(x_adv), head))
        cos[np.arange(24), part["label"]] = -np.inf
        np.testing.assert_array_equal(np.asarray(y_nb), cos.argmax(1))


def test_gradient_ascent_increases_cosface_loss_on_forget_batch():
    net, variables, head, ctx = _setup()
    method = M.get_method("ga")
    cfg = {"lr": 0.05, "bn_mode": "frozen", "flip": False, "weight_decay": 0.0}
    state = M.init_state(method, cfg, variables, head, _key(0))
    batch = _batch(method, cfg)

    def cosface(params):
        x = M.normalize_images(jnp.asarray(batch["forget"]["image"]), ctx)
        z = net.apply({"params": params, "batch_stats": state.batch_stats}, x, train=False)
        return float(losses.margin_loss(z, head, batch["forget"]["label"]))

    before = cosface(state.params)
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    values = [before]
    for _ in range(5):
        state, metrics = update(state, batch)
        values.append(cosface(state.params))
    assert values[-1] > before + 1e-3, values
    assert all(b >= a - 1e-5 for a, b in zip(values, values[1:])), values


def test_hard_disp_lowers_forget_positive_cosine():
    _, variables, head, ctx = _setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "bn_mode": "frozen", "flip": False}
    state = M.init_state(method, cfg, variables, head, _key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    batch = _batch(method, cfg)
    _, first = update(state, batch)
    for _ in range(10):
        state, metrics = update(state, batch)
    assert float(metrics["loss"]) < float(first["loss"]), (first, metrics)


def test_sharded_batch_update_matches_unsharded():
    from jax.sharding import NamedSharding, PartitionSpec as P

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 (fake) devices from conftest")
    _, variables, head, ctx = _setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "flip": False}
    batch = _batch(method, cfg)
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    state = M.init_state(method, cfg, variables, head, _key(0))
    _, ref = update(state, batch)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    state = jax.device_put(M.init_state(method, cfg, variables, head, _key(0)),
                           NamedSharding(mesh, P()))
    _, out = update(state, sharded)
    np.testing.assert_allclose(float(out["loss"]), float(ref["loss"]), rtol=1e-5, atol=1e-6)


def test_augmented_views_respect_flip():
    from jaxforget.methods.dispersion import augment_views

    images = jax.random.randint(jax.random.key(0), (3, 8, 6, 3), 0, 256).astype(jnp.uint8)
    x = np.asarray(images, np.float32)
    # No translation, no jitter: every view is the image, or its mirror when flips are on.
    still = np.asarray(augment_views(jax.random.key(1), images, 8, 0.0, 0.0, flip=False))
    np.testing.assert_array_equal(still, np.broadcast_to(x, still.shape))
    views = np.asarray(augment_views(jax.random.key(1), images, 8, 0.0, 0.0, flip=True))
    mirrored = np.all(views == x[None, :, :, ::-1], axis=(2, 3, 4))
    same = np.all(views == x[None], axis=(2, 3, 4))
    assert np.all(mirrored | same) and mirrored.any() and same.any()


def test_retain_loss_is_refused_where_the_method_has_its_own_retain_term():
    with pytest.raises(ValueError, match=r"method.retain_loss='distill'.*'contrastive'"):
        M.resolve_hparams({"retain_loss": "distill"}, M.get_method("contrastive"))
    assert M.resolve_hparams({"retain_loss": "distill"},
                             M.get_method("hard_disp")).retain_loss == "distill"

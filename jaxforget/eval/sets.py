"""The runner's evaluation sets: which to build, building them, storing and reloading them.

Every run embeds the four sets of its split (``CORE_SETS``: head imprinting, centroid accuracy,
t-SNE and the forget CS during training need them), plus whatever the configured protocols read
(:func:`jaxforget.eval.protocols.required_sets`). ``SET_BUILDERS`` is the one table of the sets the
runner knows how to make; a protocol that reads any other set is refused by :func:`needed_sets`
with a one-line :class:`~jaxforget.errors.UserError` naming the protocol and the set.

Embeddings are stored where :func:`jaxforget.workdir.embedding_path` says (the original model's in
the shared cache, the unlearned model's in the run) and reloaded instead of recomputed;
:func:`load_stored_sets` reloads a finished run's sets without running any model
(``tools/reevaluate.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import sharding as shd
from jaxforget import workdir as wd
from jaxforget.data import pipeline
from jaxforget.data import source as source_lib
from jaxforget.data import splits, synthetic
from jaxforget.data.formats import folder
from jaxforget.errors import UserError
from jaxforget.eval import metrics, protocols
from jaxforget.eval.embed import Embeddings, embed_model, make_embed_fn

OTHER_IDENTITIES = "other_identities"  # data.distractors: the data set's people outside the split
CORE_SETS = ("forget_train", "forget_test", "retain_train", "retain_test")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The sets the runner can build
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SetBuilder:
    """How the runner makes one set: it embeds the images of ``batches(cfg, source, split,
    distractors)``, or joins the sets ``parts`` (built first, never stored)."""

    doc: str
    batches: Callable[..., pipeline.EvalBatches] | None = None
    parts: tuple[str, ...] = ()


def _split_part(name: str) -> Callable[..., pipeline.EvalBatches]:
    def batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
        return pipeline.eval_dataset(source, getattr(split, name)(),
                                     batch_size=int(cfg.eval.batch_size), label_map=split.class_index)

    return batches


def _distractor_batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
    labels = np.full(len(distractors), -1, np.int32)
    return pipeline.eval_dataset(distractors, batch_size=int(cfg.eval.batch_size), labels=labels)


SET_BUILDERS: dict[str, SetBuilder] = {
    "forget_train": SetBuilder("the forget identities' unlearning images", _split_part("forget_train")),
    "forget_test": SetBuilder("the forget identities' held-out images", _split_part("forget_test")),
    "retain_train": SetBuilder("the retain identities' training images", _split_part("retain_train")),
    "retain_test": SetBuilder("the retain identities' held-out images", _split_part("retain_test")),
    "distractors": SetBuilder("the gallery of data.distractors (labels -1)", _distractor_batches),
    "retain_all": SetBuilder("every image of the retain identities",
                             parts=("retain_train", "retain_test")),
}


def needed_sets(evals: Sequence[str]) -> tuple[str, ...]:
    """The sets a run with protocols ``evals`` builds: ``CORE_SETS``, then what the protocols read
    beyond them (in ``SET_BUILDERS`` order). A protocol reading a set without a builder is a
    :class:`UserError`."""
    extra: set[str] = set()
    for full in evals:
        try:
            protocol, arg = protocols.get_protocol(full)
        except KeyError as e:
            raise UserError(f"config field evals: {e.args[0]}") from e
        if protocol.kind is not Embeddings:
            raise UserError(f"config field evals: protocol {full!r} reads {protocol.kind.__name__} "
                            "sets, which this runner does not build.")
        for name in protocol.reads(arg):
            if name not in SET_BUILDERS:
                raise UserError(f"config field evals: protocol {full!r} needs the set {name!r}, "
                                f"which this runner has no builder for (it builds "
                                f"{', '.join(SET_BUILDERS)}).")
            extra.add(name)
    return CORE_SETS + tuple(n for n in SET_BUILDERS if n in extra and n not in CORE_SETS)


def build_distractors(cfg, source, split, input_size: tuple[int, int]):
    """The distractor gallery of the extended protocols (``config.data.distractors``).

    A folder of images (identity-less), or ``'other_identities'``: the dataset's own images of
    people who are neither forget nor retain identities (e.g. CelebA identities with too few
    images), ``data.num_distractors`` of them drawn with ``seed`` (0: all).
    """
    if cfg.data.distractors != OTHER_IDENTITIES:
        return folder.FolderSource(cfg.data.distractors, input_size, unlabelled=True)
    used = np.asarray(list(split.forget_ids) + list(split.retain_ids), dtype=source.identities.dtype)
    idx = np.flatnonzero(~np.isin(source.identities, used))
    n = int(cfg.data.num_distractors)
    if n and n < len(idx):
        idx = np.sort(np.random.default_rng(int(cfg.seed)).choice(idx, n, replace=False))
    if not len(idx):
        raise UserError(
            "data.distractors='other_identities': every image of the data set belongs to a forget "
            "or retain identity; lower retain.max_identities or give a folder of distractors."
        )
    _log(f"distractors: {len(idx)} images of people outside the split")
    return source_lib.SubsetSource(source, idx)


# --------------------------------------------------------------------------------------------
# Embedding, storing, reloading
# --------------------------------------------------------------------------------------------


def embedding_path(cfg, split, workdir: pathlib.Path, state: str, name: str) -> pathlib.Path:
    """:func:`jaxforget.workdir.embedding_path` for this version of the synthetic generator."""
    return wd.embedding_path(cfg, split, workdir, state, name,
                             data_version=synthetic.GENERATOR_VERSION)


def embed_sets(cfg, bundle, variables, source, split, names: Iterable[str], distractors,
               workdir: pathlib.Path, state: str) -> dict[str, Embeddings]:
    """Embeds every named set with model ``state`` (stored ones are reloaded, new ones stored)."""
    out: dict[str, Embeddings] = {}
    for name in names:
        builder = SET_BUILDERS[name]
        if builder.parts:
            out[name] = Embeddings.concatenate([out[p] for p in builder.parts])
            continue
        path = embedding_path(cfg, split, workdir, state, name)
        if path.exists():
            out[name] = Embeddings.load(path)
            continue
        batches = builder.batches(cfg, source, split, distractors)
        out[name] = embed_model(
            bundle,
            variables,
            batches,
            flip=bool(cfg.eval.flip),
            progress=f"[{state}] embed {name}",
            total=batches.num_images,
        )
        if shd.is_primary():
            wd.write_atomic(path, out[name].save)
    return out


def load_stored_sets(run: pathlib.Path, evals: tuple[str, ...], state: str):
    """The sets that protocols ``evals`` need, as stored by the finished run in ``run`` under
    model ``state``; returns ``(cfg, split, sets)``. No model is run: a missing file is a
    :class:`UserError` naming it (distractor galleries are never stored with a run)."""
    for name in ("config.json", "split.json"):
        if not (run / name).exists():
            raise UserError(f"{run}: no {name}; is this a finished jaxforget run directory?")
    cfg = wd.read_config(run)
    cfg.evals = tuple(evals)
    split = splits.Split.load(run / "split.json")
    names = needed_sets(cfg.evals)
    if "distractors" in names:
        raise UserError(f"{evals}: the distractor gallery is not stored with a run; re-run the "
                        "experiment with data.distractors and these evals")
    for name in names:
        path = embedding_path(cfg, split, run, state, name)
        if not SET_BUILDERS[name].parts and not path.exists():
            raise UserError(f"{run}: the {state} embeddings of {name} are not stored ({path}); "
                            "re-run the experiment with these evals")
    return cfg, split, embed_sets(cfg, None, None, None, split, names, None, run, state)


# --------------------------------------------------------------------------------------------
# What the runner makes from the sets
# --------------------------------------------------------------------------------------------


def imprint_head(train_sets: Sequence[Embeddings], num_classes: int, dim: int) -> np.ndarray:
    """Class weights = normalised mean embedding of each identity's train images."""
    w = np.zeros((num_classes, dim), np.float32)
    for e in train_sets:
        np.add.at(w, e.labels, e.emb)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    missing = np.nonzero(norms[:, 0] == 0)[0]
    if missing.size:  # identities without train images get a random direction
        w[missing] = np.random.default_rng(0).standard_normal((missing.size, dim))
        norms = np.linalg.norm(w, axis=1, keepdims=True)
    return w / norms


def forget_cs_hook(bundle, source, split) -> Callable[[Any], dict[str, float]]:
    """Forget-test compactness (CS) of the model being trained, for the metrics log:
    ``hook(variables) -> {'forget_cs': CS}`` over the forget test images (decoded once)."""
    indices = split.forget_test()
    images = np.stack([source[int(i)]["image"] for i in indices])
    labels = split.labels(np.asarray(source.identities)[indices])
    fn = jax.jit(
        make_embed_fn(
            functools.partial(bundle.module.apply, train=False),
            bundle.pixel_mean,
            bundle.pixel_std,
            flip=False,
        )
    )

    def hook(variables) -> dict[str, float]:
        z = np.concatenate(
            [
                np.asarray(fn(variables, jnp.asarray(images[i : i + 256])))
                for i in range(0, len(images), 256)
            ]
        )
        return {"forget_cs": float(metrics.compactness_score(z, labels)["CS"])}

    return hook

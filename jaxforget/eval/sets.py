"""The runner's evaluation sets: which to build, building them, storing and reloading them.

Every run embeds the four sets of its split (``CORE_SETS``: head imprinting, centroid accuracy,
t-SNE and the forget CS during training need them), plus whatever the configured protocols read
(:func:`jaxforget.eval.protocols.required_sets`). ``SET_BUILDERS`` is the one table of the sets the
runner knows how to make (:func:`set_builders` adds a config's InsightFace ``.bin`` verification
packs, ``data.verification_bins``: the images ``<stem>_images`` and their pairs ``<stem>``); a
protocol that reads any other set is refused by :func:`needed_sets` with a one-line
:class:`~jaxforget.errors.UserError` naming the protocol and the set.

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
from jaxforget.data import factory, splits, synthetic
from jaxforget.data import source as source_lib
from jaxforget.data.formats import cfp, folder, verification_bin
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
    distractors)``, or joins the sets ``parts`` (built first, never stored): concatenated, or
    ``join(cfg, parts)`` (a :class:`~jaxforget.eval.protocols.PairSet`, say). ``paths`` are the
    config fields naming what the set reads (checked before any work by ``validation``)."""

    doc: str
    batches: Callable[..., pipeline.EvalBatches] | None = None
    parts: tuple[str, ...] = ()
    join: Callable[[Any, list], Any] | None = None
    paths: tuple[str, ...] = ()


def _split_part(name: str) -> Callable[..., pipeline.EvalBatches]:
    def batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
        return pipeline.eval_dataset(source, getattr(split, name)(),
                                     batch_size=int(cfg.eval.batch_size), label_map=split.class_index)

    return batches


def _distractor_batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
    labels = np.full(len(distractors), -1, np.int32)
    return pipeline.eval_dataset(distractors, batch_size=int(cfg.eval.batch_size), labels=labels)


def _cfp_batches(pose: str) -> Callable[..., pipeline.EvalBatches]:
    """CFP's ``pose`` images (``data.cfp_root``, aligned by its landmarks; labels = subject)."""

    def batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
        src = cfp.CFPSource(cfg.data.cfp_root, source.output_size, poses=(pose,))
        if src.num_without_landmarks:
            _log(f"CFP {pose}: {src.num_without_landmarks} of {len(src)} images have no landmarks "
                 "and are resized whole")
        return pipeline.eval_dataset(src, batch_size=int(cfg.eval.batch_size),
                                     labels=src.identities.astype(np.int64))

    return batches


def _cfp_pairs(protocol: str) -> Callable[[Any, list], protocols.PairSet]:
    """The ``Protocol/Split/<protocol>`` pairs of CFP over its embedded frontal (and profile)
    sets, with the ten folds (:func:`jaxforget.data.formats.cfp.read_cfp_pairs`)."""

    def join(cfg, parts: list) -> protocols.PairSet:
        root = cfg.data.cfp_root
        emb_of = {}
        for pose, part in zip(("frontal", "profile"), parts):
            ids = cfp.CFPSource(root, poses=(pose,), landmarks=None).image_ids
            emb_of.update({ids[int(r)]: part.emb[k] for k, r in enumerate(part.image_ids)})
        pairs = cfp.read_cfp_pairs(root, protocol)
        missing = sorted({i for i in pairs.first + pairs.second if i not in emb_of})
        if missing:
            raise UserError(f"data.cfp_root={root!r}: the {protocol} pairs name {len(missing)} "
                            f"images that are not under Data/Images (first: {missing[:3]})")
        emb = np.stack([emb_of[i] for ab in zip(pairs.first, pairs.second) for i in ab])
        return protocols.PairSet(emb, pairs.issame, pairs.folds)

    return join


SET_BUILDERS: dict[str, SetBuilder] = {
    "forget_train": SetBuilder("the forget identities' unlearning images", _split_part("forget_train")),
    "forget_test": SetBuilder("the forget identities' held-out images", _split_part("forget_test")),
    "retain_train": SetBuilder("the retain identities' training images", _split_part("retain_train")),
    "retain_test": SetBuilder("the retain identities' held-out images", _split_part("retain_test")),
    "distractors": SetBuilder("the gallery of data.distractors (labels -1)", _distractor_batches),
    "retain_all": SetBuilder("every image of the retain identities",
                             parts=("retain_train", "retain_test")),
    "cfp_frontal": SetBuilder("CFP's frontal images (data.cfp_root)", _cfp_batches("frontal"),
                              paths=("data.cfp_root",)),
    "cfp_profile": SetBuilder("CFP's profile images (data.cfp_root)", _cfp_batches("profile"),
                              paths=("data.cfp_root",)),
    "cfp_fp_pairs": SetBuilder("CFP's frontal-profile verification pairs (Protocol/Split/FP)",
                               parts=("cfp_frontal", "cfp_profile"), join=_cfp_pairs("FP"),
                               paths=("data.cfp_root",)),
    "cfp_ff_pairs": SetBuilder("CFP's frontal-frontal verification pairs (Protocol/Split/FF)",
                               parts=("cfp_frontal",), join=_cfp_pairs("FF"),
                               paths=("data.cfp_root",)),
}


def _pack_batches(path: str) -> Callable[..., pipeline.EvalBatches]:
    """The images of an InsightFace verification pack, each labelled with its pair's ``issame``
    (1 same person, 0 not: the packs carry no identities), so the stored set is the whole pack."""

    def batches(cfg, source, split, distractors) -> pipeline.EvalBatches:
        try:
            src = verification_bin.VerificationBinSource(path, source.output_size)
        except source_lib.DataError as e:
            raise UserError(f"data.verification_bins: {e}") from e
        return pipeline.eval_dataset(src, batch_size=int(cfg.eval.batch_size),
                                     labels=np.repeat(src.issame, 2).astype(np.int32))

    return batches


def _pack_pairs(cfg, parts: list) -> protocols.PairSet:
    """A pack's embedded images as its pairs (records ``2i``, ``2i + 1``); a pair with an image
    that did not decode is left out, and said."""
    (images,) = parts
    ids = images.image_ids.astype(np.int64)
    row = np.full(int(ids.max()) + 2, -1)
    row[ids] = np.arange(len(ids))
    first, second = row[0:-1:2], row[1::2]
    keep = (first >= 0) & (second >= 0)
    if not keep.all():
        _log(f"verification pack: {int((~keep).sum())} pairs left out (an image did not decode)")
    rows = np.stack([first[keep], second[keep]], axis=1).reshape(-1)
    return protocols.PairSet(images.emb[rows], images.labels[first[keep]] > 0)


def pack_name(path: str) -> str:
    """The set name of a verification pack: its file stem (``lfw`` for ``.../lfw.bin``)."""
    return pathlib.Path(path).stem


def set_builders(cfg=None) -> dict[str, SetBuilder]:
    """:data:`SET_BUILDERS` plus two sets per verification pack of ``data.verification_bins``:
    ``<stem>_images`` (its images, stored) and ``<stem>`` (their pairs, a ``PairSet``)."""
    builders = dict(SET_BUILDERS)
    packs = () if cfg is None else tuple(cfg.data.get("verification_bins", None) or ())
    for path in packs:
        name = pack_name(path)
        builders[f"{name}_images"] = SetBuilder(f"the images of {path}", _pack_batches(str(path)))
        builders[name] = SetBuilder(f"the verification pairs of {path}", parts=(f"{name}_images",),
                                    join=_pack_pairs)
    return builders


def needed_sets(evals: Sequence[str], builders: dict[str, SetBuilder] | None = None) -> tuple[str, ...]:
    """The sets a run with protocols ``evals`` builds: ``CORE_SETS``, then what the protocols read
    beyond them (in the order of ``builders``, default :data:`SET_BUILDERS`; a config's are
    :func:`set_builders`). A protocol reading a set without a builder is a :class:`UserError`;
    plain ``verification`` reads every verification pack of the config."""
    builders = SET_BUILDERS if builders is None else builders
    packs = [n for n, b in builders.items() if n not in SET_BUILDERS and b.join]
    extra: set[str] = set()
    for full in evals:
        try:
            protocol, arg = protocols.get_protocol(full)
        except KeyError as e:
            raise UserError(f"config field evals: {e.args[0]}") from e
        reads = protocol.reads(arg)
        if protocol.kind is not Embeddings and not protocol.needs(arg):
            if not packs:
                raise UserError(f"config field evals: protocol {full!r} reads every verification "
                                "pack of data.verification_bins, which is empty; give .bin packs "
                                f"there or name a {protocol.kind.__name__} set ({full}:<set>).")
            reads = tuple(packs)
        for name in reads:
            if name not in builders:
                raise UserError(f"config field evals: protocol {full!r} needs the set {name!r}, "
                                f"which this runner has no builder for (it builds "
                                f"{', '.join(builders)}; a verification pack <stem>.bin in "
                                "data.verification_bins gives the set <stem>).")
            extra.add(name)
            extra.update(builders[name].parts)
    return CORE_SETS + tuple(n for n in builders if n in extra and n not in CORE_SETS)


def distractor_spec(value: str) -> tuple[str, str]:
    """``config.data.distractors`` read as ``(kind, path)``: ``('', '')`` for none,
    ``('other_identities', '')``, ``(<data name>, <root>)`` for ``'<data name>:<root>'`` (a data
    set the factory reads, e.g. ``'celeba:../shared/data/celeba_subset'``, or ``'folder:<root>'``
    for one sub-folder per person), and ``('images', <path>)`` for anything else: a folder of
    identity-less images."""
    value = str(value or "")
    if not value or value == OTHER_IDENTITIES:
        return value, ""
    name, sep, root = value.partition(":")
    if sep and name in factory.DATA_HELP and name != "synthetic":
        return name, root
    return "images", value


def build_distractors(cfg, source, split, input_size: tuple[int, int]):
    """The distractor gallery of the extended protocols (``config.data.distractors``).

    * a folder of images (identity-less), every image of it;
    * ``'other_identities'``: the data set's own images of people who are neither forget nor
      retain identities (e.g. CelebA identities with too few images);
    * ``'<data name>:<root>'``: another data set's images of the people **not** in this data set
      (``'celeba:../shared/data/celeba_subset'`` with ``data.name='celeba_wild'``: the subset's
      people other than CelebA-wild's 7201-7399, compared by CelebA identity number).

    The last two draw ``data.num_distractors`` images with ``seed`` (0: all).
    """
    kind, path = distractor_spec(cfg.data.distractors)
    if kind == "images":
        return folder.FolderSource(path, input_size, unlabelled=True)
    if kind == OTHER_IDENTITIES:
        pool = source
        used = np.asarray(list(split.forget_ids) + list(split.retain_ids), dtype=source.identities.dtype)
        what = "people outside the split"
    else:
        try:
            pool = factory.source_from_config({"name": kind, "root": path}, input_size)
        except (source_lib.DataError, ValueError) as e:
            raise UserError(f"data.distractors={cfg.data.distractors!r}: {e}") from e
        same_kind = pool.identities.dtype.kind == source.identities.dtype.kind
        used = np.unique(source.identities) if same_kind else pool.identities[:0]
        what = f"people of {kind}:{path} not in {source.name}"
    idx = np.flatnonzero(~np.isin(pool.identities, used))
    n = int(cfg.data.num_distractors)
    if n and n < len(idx):
        idx = np.sort(np.random.default_rng(int(cfg.seed)).choice(idx, n, replace=False))
    if not len(idx):
        raise UserError(
            f"data.distractors={cfg.data.distractors!r}: every image belongs to a person of the "
            "experiment; lower retain.max_identities or give another distractor source."
        )
    _log(f"distractors: {len(idx)} images of {what}")
    return source_lib.SubsetSource(pool, idx)


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
    builders = set_builders(cfg)
    for name in names:
        builder = builders[name]
        if builder.parts:
            parts = [out[p] for p in builder.parts]
            out[name] = builder.join(cfg, parts) if builder.join else Embeddings.concatenate(parts)
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


def is_stored(cfg, split, workdir: pathlib.Path, state: str, names: Iterable[str]) -> bool:
    """Whether every named set of model ``state`` is stored (so :func:`embed_sets` needs no model)."""
    builders = set_builders(cfg)
    return all(builders[n].parts or embedding_path(cfg, split, workdir, state, n).exists()
               for n in names)


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
    builders = set_builders(cfg)
    names = needed_sets(cfg.evals, builders)
    if "distractors" in names:
        raise UserError(f"{evals}: the distractor gallery is not stored with a run; re-run the "
                        "experiment with data.distractors and these evals")
    for name in names:
        path = embedding_path(cfg, split, run, state, name)
        if not builders[name].parts and not path.exists():
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

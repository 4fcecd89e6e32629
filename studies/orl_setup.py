"""The ORL real-face set-up shared by ``tests/test_realface.py`` and the studies.

* model: the real MobileFaceNet (``../shared/weights/mobilefacenet_casia/068.ckpt``, converted on
  the fly by :func:`jaxforget.models.load_pretrained`; 112x96 inputs, 128-d embeddings);
* data: ORL faces (``../shared/data/orl_faces``, 40 identities x 10 greyscale images, resized whole
  to 112x96 by :class:`jaxforget.data.formats.folder.FolderSource`);
* split: :func:`jaxforget.data.splits.make_split` draws ``num_forget`` forget identities with a
  seed; each has a train half (5 images, the unlearning data) and a test half (5 images, the
  queries); the other identities are the retain set;
* unlearning: :func:`unlearn` runs the product's recipe, :func:`jaxforget.trainer.unlearn`, on P x K
  batches of the forget train images (:func:`jaxforget.data.pipeline.train_dataset`, flips on
  device), on one device and writing nothing;
* evaluation (single view, no flip-averaging, to keep CPU time down):

  - forget: ``forget_base`` on the forget test images (each query searches the other forget test
    images: mAP, R@1) and their leave-one-out Cluster Compactness ``CS``;
  - retain: leave-one-out retrieval over **every** image of the retain identities (35 x 10 = 350
    queries, each against the other 349 images; the same self-search as ``forget_base``), plus
    its ``CS``. Every retain image is unseen by the unlearning, so train/test halves do not matter
    there, and 350 queries measure the change more finely than a query/gallery half split.

:mod:`studies.orl_sweep` sweeps hyper-parameters over this set-up and :mod:`studies.forget_floor`
scores its forget test photos with features that know no faces.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxforget import methods, trainer
from jaxforget.data import pipeline, splits
from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.formats.folder import FolderSource
from jaxforget.eval import embed_model, protocols
from jaxforget.eval.embed import Embeddings
from jaxforget.methods import projection
from jaxforget.models import ModelBundle, load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = ("weights", "mobilefacenet_casia", "068.ckpt")
ORL = ("data", "orl_faces")
#: Forget batches whose summed gradient ranks the weights for SalUn (the configs' value of
#: ``method.salun_batches``).
SALUN_BATCHES = 8


@dataclasses.dataclass
class OrlSetup:
    """Everything a run needs: the model, ORL, the split and its record index sets."""

    bundle: ModelBundle
    variables: dict[str, Any]
    source: FolderSource
    split: splits.Split
    forget_train: np.ndarray   # record indices of the forget identities' train images
    forget_test: np.ndarray    # record indices of their test images
    retain_all: np.ndarray     # record indices of every image of the retain identities


@dataclasses.dataclass
class RetainData:
    """Images for the retain term (distillation needs no labels that match the model's head)."""

    source: Any
    indices: np.ndarray
    identities_per_batch: int = 8
    images_per_identity: int = 2

    def batches(self, seed: int):
        return iter(pipeline.train_dataset(
            self.source, self.indices, identities_per_batch=self.identities_per_batch,
            images_per_identity=self.images_per_identity, seed=seed + 1, flip=False))


def celeba_retain(celeba_root: str | os.PathLike, input_size: tuple[int, int], *,
                  num_images: int = 2000) -> RetainData:
    """Generic faces for the retain term: the first ``num_images`` images of the CelebA subset
    (other people than ORL's, another camera and colour), aligned to ``input_size``."""
    source = CelebASource(celeba_root, input_size, limit=num_images)
    return RetainData(source, np.arange(len(source)))


def load_setup(weights: str | os.PathLike, orl_root: str | os.PathLike, *, num_forget: int = 5,
               seed: int = 0) -> OrlSetup:
    """Loads the MobileFaceNet checkpoint and ORL, and draws the seeded forget / retain split."""
    bundle, variables = load_pretrained(dict(
        name="mobilefacenet", input_size=(112, 96), embedding_size=128, init=str(weights)))
    source = FolderSource(orl_root, bundle.input_size)
    split = splits.make_split(source.identities, num_forget=num_forget, min_images=10,
                              train_fraction=0.5, seed=seed, image_ids=source.image_ids)
    retain_all = np.sort(np.concatenate([split.retain_train(), split.retain_test()]))
    return OrlSetup(bundle, variables, source, split, split.forget_train(), split.forget_test(),
                    retain_all)


def embed_records(setup: OrlSetup, variables: Mapping[str, Any], indices: np.ndarray,
                  batch_size: int = 64) -> Embeddings:
    """L2-normalised single-view embeddings of the given records (labels = split classes)."""
    batches = pipeline.eval_dataset(setup.source, indices, batch_size=batch_size,
                                    label_map=setup.split.class_index)
    return embed_model(setup.bundle, variables, batches, flip=False, progress=False,
                       devices=jax.local_devices()[:1])


def evaluate(setup: OrlSetup, variables: Mapping[str, Any], *, retain: bool = True
             ) -> dict[str, dict[str, float]]:
    """``{'forget': {mAP, R@1, CS}, 'retain': {mAP, R@1, CS}}`` (see the module docstring).

    One embedding pass covers both sets; ``retain=False`` embeds and scores the forget test images
    only (25 images instead of 375).
    """
    nf = len(setup.forget_test)
    idx = np.concatenate([setup.forget_test, setup.retain_all]) if retain else setup.forget_test
    emb = embed_records(setup, variables, idx)
    if not np.array_equal(emb.image_ids, idx):  # the eval pipeline keeps order; make sure
        raise RuntimeError("embed_records returned the records in another order than requested")
    keys = ("mAP", "R@1", "CS")
    out = {"forget": protocols.forget_base(emb.subset(np.arange(nf)))}
    if retain:
        out["retain"] = protocols.forget_base(emb.subset(np.arange(nf, len(idx))))
    return {part: {k: float(m[k]) for k in keys} for part, m in out.items()}


def method_config(*, lr: float, bn_mode: str, steps: int, margin: float = 0.0,
                  augmented_views: bool = False, salun_fraction: float = 0.0,
                  optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
                  name: str = "hard_disp", **extra: Any) -> dict[str, Any]:
    """``config.method`` fields of the run (``extra``: any other method field; everything else:
    the method's defaults)."""
    return dict(name=name, lr=lr, bn_mode=bn_mode, steps=steps, margin=margin,
                augmented_views=augmented_views, salun_fraction=salun_fraction,
                optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                schedule="constant", flip=True, **extra)


def unlearn(setup: OrlSetup, method_cfg: Mapping[str, Any], *, identities_per_batch: int = 5,
            images_per_identity: int = 4, seed: int = 0, retain: RetainData | None = None,
            callback: Callable[[int, dict[str, Any], dict[str, float]], None] | None = None,
            callback_at: Iterable[int] = ()) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Runs ``method_cfg['steps']`` steps of the configured method on the forget train images.

    The training is :func:`jaxforget.trainer.unlearn` on one device, writing nothing, with the PRNG
    key ``seed`` and P x K forget batches drawn with ``seed``. With ``project=True`` the identity
    projection is applied first, as the runner does. With ``salun_fraction > 0`` the SalUn mask
    ranks the weights by the method's own SalUn loss (the trainer chooses it) over
    ``method_cfg['salun_batches']`` (default :data:`SALUN_BATCHES`) forget batches drawn with
    ``seed + 2``, as the runner does.

    ``retain``: the images of the retain term, needed when ``method_cfg['retain_weight'] > 0``.
    Returns the unlearned variables (host arrays) and the per-step training records.
    ``callback(step, variables, record)`` is called after each step listed in ``callback_at``.
    """
    method = methods.get_method(method_cfg["name"])
    hp = methods.resolve_hparams(method_cfg, method)
    ctx = methods.Context(apply_fn=setup.bundle.module.apply, pixel_mean=setup.bundle.pixel_mean,
                          pixel_std=setup.bundle.pixel_std, num_classes=setup.split.num_classes)
    start = setup.variables
    if hp.project:  # as the runner does
        train = embed_records(setup, start, setup.forget_train)
        start, _ = projection.project_identities(setup.bundle.family, start, train.emb,
                                                 train.labels)

    def forget_batches(s):
        return iter(pipeline.train_dataset(
            setup.source, setup.forget_train, identities_per_batch=identities_per_batch,
            images_per_identity=images_per_identity, seed=s, label_map=setup.split.class_index,
            flip=False))  # the update step flips on device

    def saliency_batches():
        it = forget_batches(seed + 2)
        return [next(it) for _ in range(int(method_cfg.get("salun_batches", SALUN_BATCHES)))]

    iterators = {"forget": _images_and_labels(forget_batches(seed))}
    if "retain" in method.data_needs(hp):
        if retain is None:
            raise ValueError("method_cfg asks for a retain term (retain_weight > 0): pass retain=")
        iterators["retain"] = _images_and_labels(retain.batches(seed))
    at = set(int(s) for s in callback_at)

    def on_step(step: int, state: Any, record: dict[str, float]) -> None:
        if callback is not None and step in at:
            callback(step, methods.variables_of(state), record)

    result = trainer.unlearn(method, hp, ctx, start, iterators, rng=jax.random.PRNGKey(seed),
                             saliency_batches=saliency_batches, on_step=on_step)
    return result.variables, result.metrics


def _images_and_labels(batches: Iterator[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Only the images and labels of each batch. The study's batches carry no padding, and
    without the (all-true) mask the step computes plain means, as it always has here."""
    for b in batches:
        yield {"image": b["image"], "label": b["label"]}

"""Identity-level forget / retain splits, saved to and loaded from JSON.

A :class:`Split` lists the forget and retain identities, each identity's train and test record
indices (indices into the source the split was made from), and ``class_index``: raw identity ->
int class ``0..C-1`` over forget and retain identities together, in sorted identity order.

Determinism: identities are sorted; forget identities are drawn with
``numpy.random.default_rng([seed, 0])`` from the sorted eligible list; each identity's images are
permuted with ``default_rng([seed, 1, k])`` where ``k`` is the identity's position in the sorted
list of *all* identities. numpy's ``Generator`` streams (PCG64) are stable across platforms, so the
same seed and the same per-record identities give the same split on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from jaxforget.data.source import DataError, EmptyDatasetError
from jaxforget.errors import UserError
from jaxforget.workdir import write_atomic

SPLIT_FORMAT_VERSION = 1


class SplitError(DataError):
    """A split cannot be made as asked (unknown identity, too few images, ...)."""


class SplitFileError(SplitError, UserError):
    """A split file that cannot be read (not JSON, a wrong or inconsistent field); the user fixes
    it by deleting it (the run makes the split again), so it is also a :class:`UserError`."""


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _sort_key(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


def fingerprint(image_ids: Sequence[str]) -> str:
    """Short hash of the ordered image ids, to check that a split matches a source."""
    h = hashlib.sha256()
    for s in image_ids:
        h.update(str(s).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_id_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) or _is_int(i) for i in v)


def _field(obj: Mapping[str, Any], key: str, ok: Any, what: str, where: str, default: Any = KeyError) -> Any:
    """``obj[key]`` checked by ``ok``; a missing or wrong field raises :class:`SplitFileError`."""
    if key not in obj and default is not KeyError:
        return default
    if key not in obj:
        raise SplitFileError(f"{where}: split file lacks the field {key!r}")
    if not ok(obj[key]):
        raise SplitFileError(f"{where}: field {key!r} should be {what}; got {obj[key]!r:.80}")
    return obj[key]


def _pairs(obj: Mapping[str, Any], key: str, ok: Any, what: str, where: str) -> dict:
    """A list of ``[identity, value]`` pairs as a dict, each value checked by ``ok``."""
    out = {}
    for item in _field(obj, key, lambda v: isinstance(v, list), f"a list of {what}", where):
        if not (isinstance(item, list) and len(item) == 2 and _is_id_list(item[:1]) and ok(item[1])):
            raise SplitFileError(f"{where}: field {key!r} should hold {what}; got {item!r:.80}")
        out[item[0]] = item[1]
    return out


@dataclasses.dataclass(frozen=True)
class Split:
    """A forget / retain split over one source's records.

    Attributes:
      forget_ids: forget identities (sorted).
      retain_ids: retain identities (sorted).
      train: identity -> sorted record indices of its train images (D_f train / D_r train).
      test: identity -> sorted record indices of its test images (D_f test / D_r test).
      class_index: identity -> class ``0..C-1`` over forget and retain identities (sorted order).
      seed: the seed the split was drawn with.
      num_records: length of the source.
      source_fingerprint: :func:`fingerprint` of the source's image ids ('' when unknown).
      params: the arguments of :func:`make_split`.
    """

    forget_ids: tuple
    retain_ids: tuple
    train: Mapping[Hashable, np.ndarray]
    test: Mapping[Hashable, np.ndarray]
    class_index: Mapping[Hashable, int]
    seed: int
    num_records: int
    source_fingerprint: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # -- record index sets ------------------------------------------------------------------------
    def _gather(self, ids: Iterable[Hashable], part: Mapping[Hashable, np.ndarray]) -> np.ndarray:
        arrays = [np.asarray(part[i], np.int64) for i in ids]
        return np.sort(np.concatenate(arrays)) if arrays else np.zeros((0,), np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_index)

    def forget_train(self) -> np.ndarray:
        """Record indices of D_f train."""
        return self._gather(self.forget_ids, self.train)

    def forget_test(self) -> np.ndarray:
        """Record indices of D_f test."""
        return self._gather(self.forget_ids, self.test)

    def retain_train(self) -> np.ndarray:
        """Record indices of D_r train."""
        return self._gather(self.retain_ids, self.train)

    def retain_test(self) -> np.ndarray:
        """Record indices of D_r test."""
        return self._gather(self.retain_ids, self.test)

    def labels(self, identities: Sequence[Hashable] | np.ndarray, missing: int = -1) -> np.ndarray:
        """``int32`` class indices of raw ``identities`` (``missing`` for identities not in the split)."""
        return np.asarray([self.class_index.get(_py(v), missing) for v in identities], np.int32)

    def check_source(self, source) -> None:
        """Raise when ``source`` is not the dataset this split was made from."""
        if len(source) != self.num_records:
            raise SplitError(
                f"split was made for {self.num_records} records but the source {getattr(source, 'name', '')} "
                f"has {len(source)}; rebuild the split for this source"
            )
        if self.source_fingerprint and fingerprint(source.image_ids) != self.source_fingerprint:
            raise SplitError(
                f"split fingerprint {self.source_fingerprint} does not match the source's image ids "
                f"({fingerprint(source.image_ids)}): same length, different images or order"
            )

    def training_set(self) -> dict[str, Any]:
        """What a model fine-tuned on this split's train images sees: every identity's train
        records and its class (forget and retain alike), not which identities are forgotten."""
        full = self.to_json()
        return {k: full[k] for k in ("num_records", "source_fingerprint", "class_index", "train")}

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def ident_pairs(part):
            ids = sorted(part, key=_sort_key)
            return [[i, [int(x) for x in part[i]]] for i in ids]

        return {
            "format": "jaxforget.split",
            "version": SPLIT_FORMAT_VERSION,
            "seed": self.seed,
            "num_records": self.num_records,
            "source_fingerprint": self.source_fingerprint,
            "params": dict(self.params),
            "forget_ids": list(self.forget_ids),
            "retain_ids": list(self.retain_ids),
            "class_index": [[i, int(c)] for i, c in sorted(self.class_index.items(), key=lambda kv: kv[1])],
            "train": ident_pairs(self.train),
            "test": ident_pairs(self.test),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "<json>") -> "Split":
        """The split ``obj`` (as :meth:`to_json` writes it) describes; anything malformed or
        inconsistent raises :class:`SplitFileError` starting with ``where``."""
        if not isinstance(obj, Mapping):
            raise SplitFileError(f"{where}: a split file holds a JSON object, not a {type(obj).__name__}")
        if obj.get("format") != "jaxforget.split":
            raise SplitFileError(f"{where}: not a jaxforget split file (field 'format' is {obj.get('format')!r})")
        if obj.get("version") != SPLIT_FORMAT_VERSION:
            raise SplitFileError(f"{where}: split format version {obj.get('version')} is not {SPLIT_FORMAT_VERSION}")
        num_records = _field(obj, "num_records", _is_count, "a record count", where)
        in_range = lambda v: isinstance(v, list) and all(_is_count(x) and x < num_records for x in v)  # noqa: E731
        what = f"[identity, [record indices below {num_records}]] pairs"
        split = cls(
            forget_ids=tuple(_field(obj, "forget_ids", _is_id_list, "a list of identities", where)),
            retain_ids=tuple(_field(obj, "retain_ids", _is_id_list, "a list of identities", where)),
            train={i: np.asarray(v, np.int64) for i, v in _pairs(obj, "train", in_range, what, where).items()},
            test={i: np.asarray(v, np.int64) for i, v in _pairs(obj, "test", in_range, what, where).items()},
            class_index=_pairs(obj, "class_index", _is_count, "[identity, class] pairs", where),
            seed=_field(obj, "seed", _is_int, "an integer", where),
            num_records=num_records,
            source_fingerprint=_field(obj, "source_fingerprint", lambda v: isinstance(v, str), "a string", where, ""),
            params=dict(_field(obj, "params", lambda v: isinstance(v, Mapping), "an object", where, {})),
        )
        ids = set(split.forget_ids) | set(split.retain_ids)
        if (len(ids) != len(split.forget_ids) + len(split.retain_ids) or set(split.class_index) != ids
                or not ids <= set(split.train) or not ids <= set(split.test)
                or sorted(split.class_index.values()) != list(range(len(ids)))):
            raise SplitFileError(
                f"{where}: inconsistent split: the forget and retain identities must be distinct, each with "
                "train and test records, and classes 0..C-1 numbering exactly them; make the split again"
            )
        return split

    def save(self, path: str | os.PathLike) -> None:
        """Write the split as JSON (atomically)."""
        write_atomic(path, json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        """Reads a split file; a file that is not one raises :class:`SplitFileError` naming it."""
        path = os.fspath(path)
        again = "; delete it to make the split again"
        try:
            with open(path, "r", encoding="utf-8") as f:
                obj = json.load(f)
        except (ValueError, RecursionError) as e:  # JSON or UTF-8 errors, absurd nesting
            raise SplitFileError(f"{path}: not a JSON split file ({type(e).__name__}: {e}){again}") from None
        try:
            return cls.from_json(obj, path)
        except SplitFileError as e:
            raise SplitFileError(f"{e}{again}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


def _split_images(indices: np.ndarray, train_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle one identity's records and cut them; both halves non-empty when ``n >= 2``.

    The train half has ``round(train_fraction * n)`` records with Python's rounding (halves to
    even): with 0.5, n = 3 -> 2 train / 1 test, n = 5 -> 2 / 3, n = 9 -> 4 / 5.
    """
    perm = rng.permutation(indices)
    n = len(perm)
    if n == 1:
        return np.sort(perm), np.zeros((0,), np.int64)
    n_train = int(round(train_fraction * n))
    n_train = min(max(n_train, 1), n - 1)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def make_split(
    identities: Sequence[Hashable] | np.ndarray,
    *,
    num_forget: int | None = None,
    forget_ids: Sequence[Hashable] | None = None,
    min_images: int = 2,
    train_fraction: float = 0.5,
    retain_min_images: int = 1,
    retain_train_fraction: float | None = None,
    num_retain: int | None = None,
    seed: int = 0,
    halves_seed: int | None = None,
    image_ids: Sequence[str] | None = None,
) -> Split:
    """Draw a forget / retain split from per-record raw identities.

    Args:
      identities: raw identity of every record (``source.identities``).
      num_forget: number of forget identities drawn at random among those with at least
        ``min_images`` images. Exactly one of ``num_forget`` / ``forget_ids`` must be given.
      forget_ids: explicit forget identities (each must exist and have ``min_images`` images).
      min_images: minimum images of a forget identity (>= 2 so it has train and test images).
      train_fraction: fraction of each forget identity's images in its train part (the paper uses
        halves); both parts keep at least one image.
      retain_min_images: retain identities are all other identities with at least this many images
        (identities with one image get only a train image).
      retain_train_fraction: the retain identities' train fraction (defaults to ``train_fraction``).
      num_retain: keep only this many retain identities (drawn at random), ``None`` keeps all.
      seed: the split's seed (draws the forget and retain identities).
      halves_seed: the seed that cuts each identity's images into train and test parts (default
        ``seed``). A fixed value cuts every person the same way whichever identities ``seed``
        forgets, so one base model fine-tuned on the train parts serves every seed.
      image_ids: the source's image ids, to store a fingerprint checked by ``Split.check_source``.
    Raises:
      EmptyDatasetError: no records.
      SplitError: unknown forget identity, too few images, too few eligible identities, bad args.
    """
    ids = np.asarray(identities)
    n = len(ids)
    if n == 0:
        raise EmptyDatasetError("cannot split an empty dataset (0 records)")
    if (num_forget is None) == (forget_ids is None):
        raise SplitError("give exactly one of num_forget (a count) or forget_ids (a list of identities)")
    if min_images < 2:
        raise SplitError(f"min_images must be >= 2 so each forget identity has train and test images; got {min_images}")
    if not 0.0 < train_fraction < 1.0:
        raise SplitError(f"train_fraction must be in (0, 1); got {train_fraction}")
    r_frac = train_fraction if retain_train_fraction is None else retain_train_fraction
    if not 0.0 < r_frac < 1.0:
        raise SplitError(f"retain_train_fraction must be in (0, 1); got {r_frac}")
    if retain_min_images < 1:
        raise SplitError(f"retain_min_images must be >= 1; got {retain_min_images}")

    py_ids = [_py(v) for v in ids.tolist()]
    counts = Counter(py_ids)
    all_ids = sorted(counts, key=_sort_key)
    position = {v: k for k, v in enumerate(all_ids)}
    members: dict[Hashable, list[int]] = {v: [] for v in all_ids}
    for r, v in enumerate(py_ids):
        members[v].append(r)

    if forget_ids is not None:
        chosen = []
        for v in forget_ids:
            v = _py(v)
            if v not in counts:
                # Tolerate '123' vs 123 mismatches from config files.
                alt = [w for w in all_ids if str(w) == str(v)]
                if len(alt) != 1:
                    raise SplitError(
                        f"forget identity {v!r} is not in the dataset ({len(all_ids)} identities over {n} "
                        f"records; e.g. {all_ids[:5]})"
                    )
                v = alt[0]
            if counts[v] < min_images:
                raise SplitError(
                    f"forget identity {v!r} has {counts[v]} image(s); the split needs at least "
                    f"min_images={min_images} per forget identity"
                )
            if v in chosen:
                raise SplitError(f"forget identity {v!r} is listed twice")
            chosen.append(v)
        if not chosen:
            raise SplitError("forget_ids is empty")
    else:
        if num_forget < 1:
            raise SplitError(f"num_forget must be >= 1; got {num_forget}")
        eligible = [v for v in all_ids if counts[v] >= min_images]
        if len(eligible) < num_forget:
            top = sorted(counts.values(), reverse=True)[:5]
            raise SplitError(
                f"asked for {num_forget} forget identities with >= {min_images} images, but only "
                f"{len(eligible)} of {len(all_ids)} identities have that many (largest counts: {top}); "
                f"lower num_forget or min_images"
            )
        pick = np.random.default_rng([seed, 0]).choice(len(eligible), size=num_forget, replace=False)
        chosen = [eligible[int(k)] for k in pick]
    forget = sorted(chosen, key=_sort_key)
    forget_set = set(forget)

    retain = [v for v in all_ids if v not in forget_set and counts[v] >= retain_min_images]
    if num_retain is not None:
        if num_retain > len(retain):
            raise SplitError(
                f"asked for {num_retain} retain identities with >= {retain_min_images} images; only "
                f"{len(retain)} remain after removing the {len(forget)} forget identities"
            )
        pick = np.random.default_rng([seed, 2]).choice(len(retain), size=num_retain, replace=False)
        retain = sorted((retain[int(k)] for k in pick), key=_sort_key)

    train: dict[Hashable, np.ndarray] = {}
    test: dict[Hashable, np.ndarray] = {}
    for v in forget + retain:
        frac = train_fraction if v in forget_set else r_frac
        rng = np.random.default_rng([seed if halves_seed is None else halves_seed, 1, position[v]])
        train[v], test[v] = _split_images(np.asarray(members[v], np.int64), frac, rng)

    classes = sorted(forget + retain, key=_sort_key)
    params = dict(
        num_forget=num_forget,
        forget_ids=None if forget_ids is None else [_py(v) for v in forget_ids],
        min_images=min_images,
        train_fraction=train_fraction,
        retain_min_images=retain_min_images,
        retain_train_fraction=retain_train_fraction,
        num_retain=num_retain,
    )
    if halves_seed is not None:  # only when set: the split files (and cache keys) of runs without it stay as they were
        params["halves_seed"] = int(halves_seed)
    return Split(
        forget_ids=tuple(forget),
        retain_ids=tuple(retain),
        train=train,
        test=test,
        class_index={v: k for k, v in enumerate(classes)},
        seed=int(seed),
        num_records=n,
        source_fingerprint=fingerprint(image_ids) if image_ids is not None else "",
        params=params,
    )


def split_source(source, **kwargs) -> Split:
    """:func:`make_split` over ``source.identities`` with the source's fingerprint."""
    return make_split(source.identities, image_ids=source.image_ids, **kwargs)

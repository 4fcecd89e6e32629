"""The one restricted unpickler: a pickle may name only the globals its reader allows.

A pickle runs code by naming a global (``os.system``, any class with a ``__reduce__``) that the
unpickler imports and calls. :func:`restricted_load` resolves a global only through the caller's
allow-list (``{(module, name): object}``) and refuses every other one with
:class:`UnsafePickleError`, naming the file, before anything is called. The PyTorch checkpoint
reader (:mod:`jaxforget.io.torch_format`) and the InsightFace ``.bin`` verification reader both
load through it, each with its own allow-list.

It is built on Python's pure-Python unpickler (``pickle._Unpickler``), not the C one: the C
unpickler preallocates its memo table up to the largest index a pickle names (a 9-byte pickle can
make it allocate and zero tens of GiB), while the Python one keeps the memo in a dict. On top of
it, a ``BYTEARRAY8`` is read before its buffer is allocated (the declared length is not trusted),
and a ``BUILD`` that would set attributes on an allowed global itself (changing how later files
are read) is refused.
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any, Callable, Mapping

AllowList = Mapping[tuple[str, str], Any]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle references a global that could run code; nothing was executed. (Also a
    ``ValueError``: callers that turn bad input files into one-line errors catch it.)"""


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python unpickler, see above
    """Unpickler that resolves only the globals of its allow-list."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(
        self,
        file: IO[bytes],
        allowed: AllowList,
        source: str,
        expected: str,
        advice: str,
        persistent_load: Callable[[Any], Any] | None,
        encoding: str,
    ):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._source = source
        self._expected = expected
        self._advice = advice
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            advice = f" {self._advice}" if self._advice else ""
            raise UnsafePickleError(
                f"{self._source}: refused to load: the pickle references `{module}.{name}`, which is not "
                f"{self._expected}. Unpickling it could run arbitrary code, so nothing was executed.{advice}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)

    def _load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)  # only the bytes that are there: the declared size is not allocated
        if len(data) != size:
            raise pickle.UnpicklingError(f"{self._source}: pickle data was truncated (a bytearray of {size} bytes)")
        self.append(bytearray(data))

    def _load_build(self) -> None:
        target = self.stack[-2]
        if any(target is allowed for allowed in self._allowed.values()):
            raise UnsafePickleError(
                f"{self._source}: refused to load: the pickle sets attributes on the allowed global "
                f"{target!r}, which would change how later files are read; nothing was changed."
            )
        pickle._Unpickler.load_build(self)  # noqa: SLF001

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.BUILD[0]] = _load_build


def restricted_load(
    file: IO[bytes],
    allowed: AllowList,
    source: str,
    *,
    expected: str = "an allowed type",
    advice: str = "",
    persistent_load: Callable[[Any], Any] | None = None,
    encoding: str = "utf-8",
) -> Any:
    """Reads ONE pickle from ``file``, resolving globals only through ``allowed``.

    Args:
      file: binary file object positioned at the pickle; left just after it (a stream of several
        pickles is read with one call each).
      allowed: ``(module, name) -> object`` the pickle may reference (a class, or a function
        that checks its arguments and raises ``pickle.UnpicklingError`` to refuse them).
      source: the file's name, first in every refusal message.
      expected: what the allowed globals are, for the message ("... which is not {expected}").
      advice: a sentence appended to the refusal message (what the user can do).
      persistent_load: resolves persistent ids (PyTorch's storages); without it any persistent
        id is refused.
      encoding: how Python 2 ``str`` objects are decoded (``'bytes'`` keeps them as bytes).
    Raises:
      UnsafePickleError: the pickle names a global outside ``allowed`` (nothing was called), or
        holds a persistent id and no ``persistent_load`` was given.
    """
    return _RestrictedUnpickler(file, allowed, source, expected, advice, persistent_load, encoding).load()

"""MXNet RecordIO (``.rec`` + ``.idx``) reading and writing without mxnet, and the face source
over an InsightFace training pack (:class:`RecordIOSource`).

Layout (``docs/FORMATS.md``): the ``.idx`` file has ``key<TAB>byte offset`` lines. Each record
starts with the uint32 magic ``0xced7230a`` and a uint32 word whose lower 29 bits are the payload
length and upper 3 bits a continuation flag (0: whole record; 1/2/3: first/middle/last part of a
record that was split where its payload contained the magic word). The payload is padded to 4
bytes.

An InsightFace payload is the header ``IfQQ`` (flag uint32, label float32, id uint64, id2 uint64)
followed by the image bytes; when ``flag > 0``, ``flag`` float32 labels follow the header and the
``label`` field is unused. Record 0 of an InsightFace pack has ``flag > 0`` and the labels
``(first identity record, end of identity records)``; the image records are ``1 .. first - 1``.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from typing import BinaryIO, Iterable, Sequence

import numpy as np
from PIL import Image

from jaxforget.data.source import DataError, EmptyDatasetError, FaceSource

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1


class RecordIOError(DataError):
    """A malformed ``.rec`` / ``.idx`` file."""


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.idx`` file into ``(keys int64, offsets int64)`` in file order."""
    keys, offsets = [], []
    with open(idx_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip().decode("ascii", "replace")
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise RecordIOError(
                    f"{idx_path}: line {lineno} should be 'key<TAB>offset', got {line!r}"
                )
            try:
                key, offset = int(parts[0]), int(parts[1])
            except ValueError as e:
                raise RecordIOError(f"{idx_path}: line {lineno} is not two integers: {line!r}") from e
            if not (-(2**63) <= key < 2**63 and -(2**63) <= offset < 2**63):
                raise RecordIOError(f"{idx_path}: line {lineno}: key or offset out of the 64-bit range: {line!r}")
            keys.append(key)
            offsets.append(offset)
    return np.asarray(keys, np.int64), np.asarray(offsets, np.int64)


def pack_payload(label: float | Sequence[float], image_bytes: bytes, record_id: int = 0, id2: int = 0) -> bytes:
    """InsightFace payload: ``IfQQ`` header (+ float32 labels when several) + image bytes."""
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(label), record_id, id2) + image_bytes
    labels = np.asarray(label, np.float32)
    return _HEADER.pack(len(labels), 0.0, record_id, id2) + labels.tobytes() + image_bytes


def unpack_payload(payload: bytes, where: str = "record") -> tuple[np.ndarray | float, bytes, int, int]:
    """Inverse of :func:`pack_payload`: ``(label(s), image bytes, id, id2)``; ``where`` (the file
    and key) starts every error message."""
    if len(payload) < _HEADER.size:
        raise RecordIOError(f"{where}: payload of {len(payload)} bytes is shorter than the 24-byte header")
    flag, label, rid, id2 = _HEADER.unpack_from(payload, 0)
    pos = _HEADER.size
    if flag > 0:
        end = pos + 4 * flag
        if end > len(payload):
            raise RecordIOError(f"{where}: header says {flag} labels but the payload has {len(payload)} bytes")
        labels = np.frombuffer(payload[pos:end], np.float32).copy()
        return labels, payload[end:], rid, id2
    return label, payload[pos:], rid, id2


def _write_part(f: BinaryIO, cflag: int, data: bytes) -> None:
    f.write(_MAGIC_BYTES)
    f.write(struct.pack("<I", (cflag << 29) | len(data)))
    f.write(data)
    f.write(b"\x00" * ((4 - len(data) % 4) % 4))


def write_record(f: BinaryIO, payload: bytes) -> int:
    """Append one record, splitting it where the payload holds the magic word at a 4-byte aligned
    offset (as MXNet does). Returns the record's start offset."""
    start = f.tell()
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == _MAGIC_BYTES]
    if not cuts:
        _write_part(f, 0, payload)
        return start
    pieces, prev = [], 0
    for c in cuts:
        pieces.append(payload[prev:c])
        prev = c + 4
    pieces.append(payload[prev:])
    for k, piece in enumerate(pieces):
        cflag = 1 if k == 0 else (3 if k == len(pieces) - 1 else 2)
        _write_part(f, cflag, piece)
    return start


def write_recordio(rec_path: str | os.PathLike, idx_path: str | os.PathLike, payloads: Iterable[tuple[int, bytes]]) -> None:
    """Write ``(key, payload)`` records to ``rec_path`` and their offsets to ``idx_path``."""
    with open(rec_path, "wb") as f, open(idx_path, "w", encoding="ascii") as fi:
        for key, payload in payloads:
            off = write_record(f, payload)
            fi.write(f"{int(key)}\t{off}\n")


class RecordIOReader:
    """Random-access reader over a ``.rec`` file and its offsets (memory-mapped, picklable)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path) if idx_path is not None else os.path.splitext(self.rec_path)[0] + ".idx"
        for p, what in ((self.rec_path, "record file"), (self.idx_path, "index file")):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"RecordIO {what} not found: {p} (pass rec_path and idx_path explicitly)")
        self.keys, self.offsets = read_index(self.idx_path)
        self.size = os.path.getsize(self.rec_path)
        bad = np.nonzero((self.offsets < 0) | (self.offsets > self.size - 8))[0]
        if bad.size:
            k = int(bad[0])
            raise RecordIOError(
                f"{self.idx_path}: offset {int(self.offsets[k])} of key {int(self.keys[k])} is outside "
                f"{self.rec_path} ({self.size} bytes); {bad.size} offsets are bad"
            )
        self._key_to_pos = {int(k): i for i, k in enumerate(self.keys)}
        self._mm: mmap.mmap | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    @property
    def buffer(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.rec_path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def __len__(self) -> int:
        return len(self.keys)

    def read_at(self, offset: int) -> bytes:
        """The payload of the record starting at byte ``offset`` (parts joined)."""
        mm = self.buffer
        parts: list[bytes] = []
        pos = int(offset)
        while True:
            if pos + 8 > self.size:
                raise RecordIOError(f"{self.rec_path}: truncated record header at byte {pos}")
            magic, word = struct.unpack_from("<II", mm, pos)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x}); "
                    f"is {self.idx_path} the index of this file?"
                )
            length, cflag = word & _LEN_MASK, word >> 29
            if pos + 8 + length > self.size:
                raise RecordIOError(f"{self.rec_path}: record at byte {pos} claims {length} bytes past the end")
            parts.append(bytes(mm[pos + 8 : pos + 8 + length]))
            pos += 8 + length + ((4 - length % 4) % 4)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise RecordIOError(f"{self.rec_path}: invalid continuation flag {cflag} at byte {pos}")
        return _MAGIC_BYTES.join(parts)

    def read_key(self, key: int) -> bytes:
        try:
            pos = self._key_to_pos[int(key)]
        except KeyError:
            raise KeyError(f"key {key} is not in {self.idx_path} ({len(self.keys)} keys)") from None
        return self.read_at(int(self.offsets[pos]))

    def header_labels(self, keys: Sequence[int]) -> np.ndarray:
        """First label of each record in ``keys`` read from headers only (vectorised, no decode)."""
        mm = np.frombuffer(self.buffer, np.uint8)
        offs = np.asarray([self.offsets[self._key_to_pos[int(k)]] for k in keys], np.int64)
        if offs.size == 0:
            return np.zeros((0,), np.float32)
        if np.any(offs + 32 > self.size):
            raise RecordIOError(f"{self.rec_path}: a record header runs past the end of the file")

        def gather(at: np.ndarray, dtype: str) -> np.ndarray:
            idx = at[:, None] + np.arange(4)[None, :]
            return mm[idx].copy().view(dtype).reshape(-1)

        flags = gather(offs + 8, "<u4")
        labels = gather(offs + 12, "<f4").astype(np.float32)
        multi = flags > 0
        if np.any(multi):
            if np.any(offs[multi] + 36 > self.size):
                raise RecordIOError(f"{self.rec_path}: a record's label list runs past the end of the file")
            labels[multi] = gather(offs[multi] + 32, "<f4")
        return labels


class RecordIOSource(FaceSource):
    """InsightFace training pack ``train.rec`` + ``train.idx`` (MS1MV2, Glint360K, WebFace).

    Identities are the integer labels read from the record headers (vectorised, no decoding).
    When record 0 is an InsightFace header (``flag > 0``) the image records are keys
    ``1 .. label[0] - 1``; otherwise every key is an image. Image ids are ``rec:<key>``.
    Images (aligned 112x112) are cropped to 112x96 (``x - 8``) or resized to ``output_size``.
    """

    fallback_geometry = "aligned112"

    def __init__(
        self, rec_path: str, idx_path: str | None = None, output_size: Sequence[int] = (112, 112), *, strict: bool = False
    ):
        self.reader = RecordIOReader(rec_path, idx_path)
        keys = [int(k) for k in self.reader.keys]
        if not keys:
            raise EmptyDatasetError(f"{self.reader.idx_path} lists no records")
        rec_path = self.reader.rec_path
        if 0 in keys:
            label0, _, _, _ = unpack_payload(self.reader.read_key(0), f"{rec_path} key 0")
            if isinstance(label0, np.ndarray) and label0.size >= 1:
                if not (np.isfinite(label0[0]) and 0 <= label0[0] <= 2**62):
                    raise RecordIOError(
                        f"{rec_path} key 0: the header record names {label0[0]} as the end of the image "
                        "records, not a record number"
                    )
                first = int(label0[0])
                keys = [k for k in keys if 1 <= k < first]
        if not keys:
            raise EmptyDatasetError(f"{self.reader.rec_path}: no image records")
        self.keys = np.asarray(keys, np.int64)
        labels = self.reader.header_labels(self.keys)
        bad = np.nonzero(~np.isfinite(labels) | (np.round(labels) != labels) | (np.abs(labels) > 2**53))[0]
        if bad.size:
            raise RecordIOError(
                f"{rec_path} key {int(self.keys[bad[0]])}: label {labels[bad[0]]} is not an integer identity "
                f"({bad.size} such records)"
            )
        super().__init__(
            [f"rec:{k}" for k in keys], labels.astype(np.int64), output_size, strict=strict, name=f"RecordIO({rec_path})"
        )

    def describe(self, i: int) -> str:
        return f"{self.reader.rec_path} key {int(self.keys[i])}"

    def _open(self, i: int) -> Image.Image:
        _, data, _, _ = unpack_payload(self.reader.read_key(int(self.keys[i])), self.describe(i))
        return Image.open(io.BytesIO(data))

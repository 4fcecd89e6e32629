"""The image-file base: annotation text that is not UTF-8, and verify() on undecodable files."""

import pytest

from jaxforget.data.formats.files import read_text
from jaxforget.data.formats.folder import FolderSource
from jaxforget.data.source import CorruptImageError, DataError
from tests.data_fixtures import encode, png_header, random_image


def test_read_text_names_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"ok\r\n\xe9t\xe9\n")
    with pytest.raises(DataError, match=r"notes.txt: not UTF-8 text \(byte 4: invalid continuation byte\)"):
        read_text(str(path))
    path.write_bytes("a,b\r\nc\n".encode())
    assert read_text(str(path)) == "a,b\r\nc\n"  # line ends kept for csv


def test_verify_reports_a_decompression_bomb(tmp_path):
    """Before (found by tests/test_fuzz_*.py): PIL's DecompressionBombError escaped verify(),
    which caught only OSError, ValueError and SyntaxError."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "good.png").write_bytes(encode(random_image(0, (12, 10)), "PNG"))
    (tmp_path / "p" / "bomb.png").write_bytes(png_header(20_000, 20_000))
    with pytest.raises(CorruptImageError, match=r"cannot decode .*bomb\.png: .*decompression bomb"):
        FolderSource(str(tmp_path), (8, 8), strict=True).verify()
    checked = FolderSource(str(tmp_path), (8, 8)).verify()
    assert checked.image_ids == ["p/good.png"] and "bomb.png" in checked.failure_report()

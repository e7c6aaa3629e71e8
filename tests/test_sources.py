"""Tests for comet_core.sources: real files made in tmp_path, no mocks."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from comet_core import sources
from comet_core.sources import BLOCK, Piece, Source, SourceError, estimate_tokens, open_source

# --- helpers -----------------------------------------------------------------------------------------


def collect(source: Source, start: int = 0) -> list[Piece]:
    """All pieces from ``start``, checking the invariants every stream must keep."""
    out = list(source.pieces(start))
    last = start
    for p in out:
        assert p.text, "empty piece yielded"
        assert p.offset > last, "offsets must strictly increase"
        last = p.offset
    return out


def text_of(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF: one Helvetica text content stream per page, with a correct xref table."""
    n = len(pages)
    page_ids = [4 + 2 * i for i in range(n)]
    kids = " ".join(f"{k} 0 R" for k in page_ids)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for page_id, text in zip(page_ids, pages, strict=True):
        lines = [
            line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in text.split("\n")
        ]
        shows = " ".join(f"({line}) Tj T*" for line in lines if line)
        content = f"BT /F1 12 Tf 16 TL 72 720 Td {shows} ET".encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def encrypted_pdf(tmp_path: Path, user: str, owner: str | None = None) -> str:
    src = tmp_path / "plain.pdf"
    src.write_bytes(pdf_bytes(["Secret page one.", "Secret page two."]))
    writer = PdfWriter(clone_from=PdfReader(src))
    writer.encrypt(user_password=user, owner_password=owner)
    out = tmp_path / "locked.pdf"
    with open(out, "wb") as f:
        writer.write(f)
    return str(out)


# --- plain text --------------------------------------------------------------------------------------


def test_utf8_text_basic(tmp_path):
    data = "Hello, world.\nSecond line — with ünïcödé and 日本語.\n".encode()
    src = open_source(write(tmp_path / "a.txt", data))
    assert (src.kind, src.unit, src.size, src.total, src.encoding) == (
        "text",
        "bytes",
        len(data),
        len(data),
        "utf-8",
    )
    pieces = collect(src)
    assert text_of(pieces) == data.decode()
    assert pieces[-1].offset == len(data)
    assert src.offset == len(data)
    assert src.sha256 == hashlib.sha256(data).hexdigest()


def test_multibyte_char_split_across_blocks(tmp_path):
    # "€" is 3 bytes and BLOCK is not a multiple of 3: block boundaries fall inside characters
    text = "€" * (BLOCK // 3 * 2 + 100) + "end"
    data = text.encode()
    src = open_source(write(tmp_path / "euro.txt", data))
    pieces = collect(src)
    assert len(pieces) >= 2
    assert text_of(pieces) == text
    assert "\ufffd" not in text_of(pieces)
    prev = 0
    for p in pieces:  # every offset is a clean restart point: the bytes between offsets decode strictly
        assert data[prev : p.offset].decode("utf-8") == p.text
        prev = p.offset
    for p in pieces[:-1]:  # and resuming there gives exactly the rest
        assert text_of(collect(src, p.offset)) == data[p.offset :].decode()


def test_tiny_blocks_every_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 5)  # many splits inside 2-, 3- and 4-byte characters
    text = "aé€𝄞b" * 50
    data = text.encode()
    src = open_source(write(tmp_path / "mix.txt", data))
    pieces = collect(src)
    assert text_of(pieces) == text
    prev = 0
    for p in pieces:
        assert data[prev : p.offset].decode("utf-8") == p.text
        prev = p.offset


def test_large_single_line_streams_in_bounded_pieces(tmp_path):
    path = tmp_path / "oneline.txt"
    chunk = ("word " * 200_000).encode()  # 1 MB, no newline anywhere
    with open(path, "wb") as f:
        for _ in range(20):
            f.write(chunk)
    size = path.stat().st_size
    src = open_source(str(path))
    tracemalloc.start()
    n = total = biggest = 0
    try:
        for p in src.pieces():
            n += 1
            total += len(p.text)
            biggest = max(biggest, len(p.text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and n >= 20
    assert biggest <= BLOCK
    assert peak < 12 * BLOCK, f"peak {peak} bytes: the file must not be read whole"


def test_utf8_bom_stripped_and_counted_in_offsets(tmp_path):
    data = b"\xef\xbb\xbf" + "Bonjour à tous.\n".encode()
    src = open_source(write(tmp_path / "bom.txt", data))
    assert src.encoding == "utf-8"
    pieces = collect(src)
    assert text_of(pieces) == "Bonjour à tous.\n"
    assert pieces[-1].offset == len(data)
    assert src.sha256 == hashlib.sha256(data).hexdigest()
    assert text_of(collect(src, 3)) == "Bonjour à tous.\n"  # resuming right after the BOM


@pytest.mark.parametrize("codec, bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")])
def test_utf16_with_bom_accepted(tmp_path, codec, bom):
    text = "UTF-16 text: naïve café, 日本語, 𝄞.\n" * 20
    data = bom + text.encode(codec)
    src = open_source(write(tmp_path / "u16.txt", data))
    assert src.kind == "text" and src.encoding == codec
    assert text_of(collect(src)) == text
    half = 2 + (len(data) - 2) // 2 // 4 * 4  # an even offset in the middle (on a BMP char boundary)
    assert text_of(collect(src, half)) == data[half:].decode(codec)


def test_utf16_without_bom_detected(tmp_path):
    text = "This file is UTF-16 without a byte order mark. It has NUL bytes everywhere.\n" * 30
    src = open_source(write(tmp_path / "u16nobom.txt", text.encode("utf-16-le")))
    assert src.encoding == "utf-16-le"
    assert text_of(collect(src)) == text


def test_latin1_detected(tmp_path):
    text = "L'été est là. Ça va très bien, merci. Le garçon naïf mange une crème brûlée à la fenêtre.\n" * 40
    src = open_source(write(tmp_path / "fr.txt", text.encode("latin-1")))
    assert src.encoding in ("cp1252", "iso8859-1", "iso8859-15")
    assert text_of(collect(src)) == text


def test_forced_encoding_and_unknown_encoding(tmp_path):
    path = write(tmp_path / "u8.txt", "café\n".encode())
    src = open_source(path, encoding="latin-1")
    assert src.encoding == "iso8859-1"
    assert text_of(collect(src)) == "cafÃ©\n"
    with pytest.raises(SourceError, match=r"u8\.txt: unknown encoding 'klingon'"):
        open_source(path, encoding="klingon")


def test_invalid_bytes_replaced_not_fatal(tmp_path):
    good = ("valid utf-8 text " * 5000).encode()  # > sniff window, so UTF-8 is chosen
    data = good + b"bad \xff\xfe bytes\n"
    src = open_source(write(tmp_path / "mostly.txt", data))
    assert src.encoding == "utf-8"
    out = text_of(collect(src))
    assert out.endswith("bad \ufffd\ufffd bytes\n")
    assert collect(src)[-1].offset == len(data)


def test_invalid_utf8_sequence_at_end_of_file(tmp_path):
    data = ("text " * 30_000).encode() + b"\xe2\x82"  # truncated 3-byte char at EOF
    src = open_source(write(tmp_path / "trunc.txt", data))
    pieces = collect(src)
    assert text_of(pieces).endswith("\ufffd")
    assert pieces[-1].offset == len(data)
    assert src.sha256 == hashlib.sha256(data).hexdigest()


# --- resume bookkeeping ------------------------------------------------------------------------------


def test_resume_with_sha256_prefix(tmp_path):
    text = "".join(f"line {i}: ünïcode €\n" for i in range(150_000))  # ~3.4 MB -> several pieces
    data = text.encode()
    path = write(tmp_path / "book.txt", data)
    src = open_source(path)
    it = src.pieces()
    first = next(it)
    second = next(it)
    x, digest = src.offset, src.sha256
    assert x == second.offset
    assert digest == hashlib.sha256(data[:x]).hexdigest()
    it.close()

    again = open_source(path, encoding=src.encoding)
    assert again.sha256_prefix(x) == digest
    rest = collect(again, x)
    assert first.text + second.text + text_of(rest) == text
    assert again.sha256 == hashlib.sha256(data).hexdigest()

    third = open_source(path)  # resume without verifying first: the prefix is hashed on the way
    collect(third, x)
    assert third.sha256 == hashlib.sha256(data).hexdigest()

    changed = bytearray(data)
    changed[10] ^= 1
    Path(path).write_bytes(bytes(changed))
    assert open_source(path).sha256_prefix(x) != digest


def test_bad_start_offsets(tmp_path):
    path = write(tmp_path / "s.txt", b"short text\n")
    src = open_source(path)
    with pytest.raises(SourceError, match=r"s\.txt: offset 99"):
        src.pieces(99)
    with pytest.raises(SourceError):
        src.pieces(-1)
    assert collect(src, 11) == []  # resuming exactly at the end: nothing left, no error


# --- binary detection --------------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "hello " * 1000)
    return buf.getvalue()


BINARIES = {
    "img.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
    "img.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4,
    "a.zip": _zip_bytes(),
    "prog": b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + bytes(range(256)) * 4,
    "nul.dat": b"some text\x00\x00\x01\x02 more text" * 100,
    "random.bin": hashlib.sha256(b"seed").digest() * 2000,
    "controls.txt": b"\x01\x02\x03\x04abc\x05\x06" * 500,
}


@pytest.mark.parametrize("name", list(BINARIES))
def test_binary_files_refused(tmp_path, name):
    path = write(tmp_path / name, BINARIES[name])
    with pytest.raises(SourceError, match="^" + re.escape(f"{path}: looks like a binary file, not text")):
        open_source(path)


def test_real_executable_refused(tmp_path):
    exe = Path("/bin/sh").resolve()
    if not exe.exists():
        pytest.skip("no /bin/sh")
    with pytest.raises(SourceError, match="looks like a binary file"):
        open_source(str(exe))


def test_text_with_tabs_escapes_and_formfeeds_accepted(tmp_path):
    text = "col1\tcol2\r\n\x1b[31mred\x1b[0m\f\n" * 100
    assert text_of(collect(open_source(write(tmp_path / "log.txt", text.encode())))) == text


# --- gzip --------------------------------------------------------------------------------------------


def test_gzip_by_magic_with_uncompressed_offsets(tmp_path):
    text = "".join(f"gz line {i} — ok\n" for i in range(120_000))  # ~2.3 MB uncompressed
    data = text.encode()
    path = write(tmp_path / "log.data", gzip.compress(data))  # no .gz extension
    src = open_source(path)
    assert (src.kind, src.unit, src.total, src.encoding) == ("gz", "bytes", None, "utf-8")
    assert src.size == os.path.getsize(path)
    pieces = collect(src)
    assert text_of(pieces) == text
    assert pieces[-1].offset == len(data)
    assert src.sha256 == hashlib.sha256(data).hexdigest()
    x = pieces[0].offset
    assert src.sha256_prefix(x) == hashlib.sha256(data[:x]).hexdigest()
    assert text_of(collect(src, x)) == data[x:].decode()
    assert src.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceError, match="past the end"):
        list(src.pieces(len(data) + 10))


def test_gzip_utf16(tmp_path):
    text = "gzip of UTF-16 text\n" * 50
    src = open_source(write(tmp_path / "u.txt.gz", gzip.compress(b"\xff\xfe" + text.encode("utf-16-le"))))
    assert src.encoding == "utf-16-le"
    assert text_of(collect(src)) == text


def test_corrupt_gzip(tmp_path):
    with pytest.raises(SourceError, match=r"^.*/bad\.gz: corrupt gzip data"):
        open_source(write(tmp_path / "bad.gz", b"\x1f\x8b\x08\x00garbage that is not deflate" * 3))


def test_truncated_gzip_fails_while_streaming(tmp_path):
    data = os.urandom(1_500_000).hex().encode()  # 3 MB of text that does not compress to nothing
    blob = gzip.compress(data)
    src = open_source(write(tmp_path / "cut.gz", blob[: len(blob) // 2]))  # header and sample are fine
    with pytest.raises(SourceError, match=r"^.*cut\.gz: corrupt gzip data"):
        collect(src)


def test_gzip_of_binary_and_empty(tmp_path):
    with pytest.raises(SourceError, match="looks like a binary file"):
        open_source(write(tmp_path / "bin.gz", gzip.compress(b"\x7fELF" + bytes(1000))))
    with pytest.raises(SourceError, match=r"^.*/empty\.gz: input is empty"):
        open_source(write(tmp_path / "empty.gz", gzip.compress(b"")))


# --- pdf ---------------------------------------------------------------------------------------------


def test_pdf_pages(tmp_path):
    path = write(tmp_path / "book.pdf", pdf_bytes(["Chapter one.\nIt begins.", "", "Chapter three (end)."]))
    src = open_source(path)
    assert (src.kind, src.unit, src.total, src.encoding) == ("pdf", "pages", 3, None)
    assert src.size == os.path.getsize(path)
    pieces = collect(src)
    assert [p.offset for p in pieces] == [1, 3]  # the empty page 2 yields nothing
    assert "Chapter one." in pieces[0].text and "It begins." in pieces[0].text
    assert pieces[0].text.endswith("\n\n")
    assert pieces[1].text == "Chapter three (end).\n\n"
    whole = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert src.sha256 == whole == src.sha256_prefix(1)
    assert [p.offset for p in collect(src, 1)] == [3]  # resume after page 1
    assert collect(src, 3) == []
    with pytest.raises(SourceError, match="outside the document"):
        src.pieces(4)


def test_pdf_encrypted(tmp_path):
    with pytest.raises(SourceError, match=r"locked\.pdf: PDF is encrypted"):
        open_source(encrypted_pdf(tmp_path, user="pw"))


def test_pdf_with_owner_password_only_is_readable(tmp_path):
    src = open_source(encrypted_pdf(tmp_path, user="", owner="owner-secret"))
    assert "Secret page two." in text_of(collect(src))


def test_pdf_broken(tmp_path):
    good = pdf_bytes(["Some text."])
    with pytest.raises(SourceError, match=r"^.*/junk\.pdf: cannot read PDF \("):
        open_source(write(tmp_path / "junk.pdf", b"%PDF-1.4\n" + b"\x00garbage\xff" * 100))
    with pytest.raises(SourceError, match=r"^.*/cut\.pdf: cannot read PDF"):
        open_source(write(tmp_path / "cut.pdf", good[: len(good) // 3]))


def test_pdf_without_text(tmp_path):
    src = open_source(write(tmp_path / "scan.pdf", pdf_bytes(["", ""])))
    assert src.total == 2
    with pytest.raises(SourceError, match=r"scan\.pdf: PDF has no extractable text \(scanned\?\)"):
        collect(src)


def test_pdf_logger_is_quiet(tmp_path, capsys, caplog):
    good = pdf_bytes(["Quiet please."])
    broken_xref = good.replace(b"startxref\n", b"startxref\n1").replace(b"xref\n0", b"xref\n9")
    src = open_source(write(tmp_path / "warn.pdf", broken_xref))  # pypdf recovers, and would warn
    assert "Quiet please." in text_of(collect(src))
    assert not [r for r in caplog.records if r.name.startswith("pypdf") and r.levelname == "WARNING"]


# --- stdin and streams -------------------------------------------------------------------------------


def test_stdin(tmp_path):
    data = ("from a pipe — ünïcode\n" * 40_000).encode()  # > 1 block
    src = open_source("-", stdin=io.BytesIO(data))
    assert (src.name, src.kind, src.size, src.total, src.unit) == ("-", "stdin", None, None, "bytes")
    pieces = collect(src)
    assert text_of(pieces) == data.decode()
    assert pieces[-1].offset == len(data)
    assert src.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceError, match="^-: a stream can only be read once"):
        src.pieces()


def test_stdin_cannot_seek_or_rehash():
    src = open_source("-", stdin=io.BytesIO(b"hello\n"))
    with pytest.raises(SourceError, match="^-: a stream cannot be resumed"):
        src.pieces(5)
    with pytest.raises(SourceError, match="^-: "):
        src.sha256_prefix(3)
    assert text_of(collect(src)) == "hello\n"


def test_stdin_empty_binary_bom_and_whitespace(tmp_path):
    with pytest.raises(SourceError, match="^-: input is empty"):
        open_source("-", stdin=io.BytesIO(b""))
    with pytest.raises(SourceError, match="^-: input is empty"):
        open_source("-", stdin=io.BytesIO(b" \n\t\n"))
    with pytest.raises(SourceError, match="^-: looks like a binary file"):
        open_source("-", stdin=io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(500)))
    src = open_source("-", stdin=io.BytesIO(b"\xff\xfe" + "hi there\n".encode("utf-16-le")))
    assert src.encoding == "utf-16-le"
    assert text_of(collect(src)) == "hi there\n"
    big_blank = open_source("-", stdin=io.BytesIO(b" " * (3 * BLOCK)))  # blank beyond the sniffed sample
    with pytest.raises(SourceError, match="^-: input is empty"):
        collect(big_blank)


def test_fifo_is_read_as_a_stream(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = b"through a named pipe\n" * 1000

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    src = open_source(str(fifo))
    assert src.kind == "stdin" and src.size is None
    assert text_of(collect(src)) == data.decode()
    t.join()


# --- file errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(SourceError, match=rf"^{path}: no such file$"):
        open_source(path)


def test_directory(tmp_path):
    with pytest.raises(SourceError, match=rf"^{tmp_path}: is a directory"):
        open_source(str(tmp_path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("top secret\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        with pytest.raises(SourceError, match=r"secret\.txt: permission denied$"):
            open_source(str(path))
    finally:
        path.chmod(0o644)


def test_empty_and_blank_files(tmp_path):
    with pytest.raises(SourceError, match=r"^.*zero\.txt: input is empty$"):
        open_source(write(tmp_path / "zero.txt", b""))
    with pytest.raises(SourceError, match=r"^.*blank\.txt: input is empty$"):
        open_source(write(tmp_path / "blank.txt", b"  \n\n\t \r\n"))
    with pytest.raises(SourceError, match=r"^.*bom\.txt: input is empty$"):
        open_source(write(tmp_path / "bom.txt", b"\xef\xbb\xbf\n"))
    big = open_source(write(tmp_path / "bigblank.txt", b"\n" * (2 * BLOCK)))  # blank past the sample
    with pytest.raises(SourceError, match=r"bigblank\.txt: input is empty"):
        collect(big)


def test_messages_are_one_line(tmp_path):
    bad = [
        str(tmp_path / "missing"),
        write(tmp_path / "junk.pdf", b"%PDF-1.7\n\n\nbroken\nlines\n"),
        write(tmp_path / "x.gz", b"\x1f\x8b\x08\x00\n\nnot\ngzip"),
    ]
    for path in bad:
        with pytest.raises(SourceError) as err:
            src = open_source(path)
            collect(src)
        assert "\n" not in str(err.value) and str(err.value).startswith(path + ": ")


# --- estimate_tokens ---------------------------------------------------------------------------------


def test_estimate_tokens_text(tmp_path):
    data = b"abcd" * 100_000
    src = open_source(write(tmp_path / "t.txt", data))
    assert estimate_tokens(src) == pytest.approx(len(data) / 4, rel=0.05)
    assert estimate_tokens(src, count_tokens=len) == len(data)  # one token per character
    cjk = "日本語のテキスト" * 10_000
    assert estimate_tokens(open_source(write(tmp_path / "ja.txt", cjk.encode()))) == pytest.approx(
        len(cjk), rel=0.05
    )


def test_estimate_tokens_fast_on_huge_sparse_file(tmp_path):
    path = tmp_path / "huge.txt"
    line = b"the quick brown fox jumps over the lazy dog\n" * 2000
    size = 2 * 1024**3
    with open(path, "wb") as f:
        for spot in (0, size // 2 - 100_000, size - len(line)):
            f.seek(spot)
            f.write(line)
        f.truncate(size)
    if path.stat().st_blocks * 512 > 64 * 1024**2:
        pytest.skip("filesystem without sparse files")
    src = open_source(str(path))
    t0 = time.perf_counter()
    n = estimate_tokens(src)
    assert time.perf_counter() - t0 < 0.2
    assert n and n > size / 10


def test_estimate_tokens_unknown_and_pdf(tmp_path):
    assert estimate_tokens(open_source("-", stdin=io.BytesIO(b"some text\n"))) is None
    assert estimate_tokens(open_source(write(tmp_path / "a.gz", gzip.compress(b"some text\n")))) is None
    pdf = open_source(write(tmp_path / "p.pdf", pdf_bytes(["x" * 400, "y" * 400, "z" * 400, "w" * 400])))
    assert estimate_tokens(pdf) == pytest.approx(400, rel=0.1)

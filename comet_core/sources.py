"""Stream text out of user inputs (text, gzip, PDF, stdin) in constant memory, resumable by offset.

``open_source(path)`` validates an input and returns a :class:`Source`; ``source.pieces(start)`` yields
:class:`Piece` objects, each carrying the offset *after* it, so a long read can be resumed exactly:

* text / gz / stdin: offsets are byte positions in the (uncompressed) byte stream, always at a point
  where decoding restarts cleanly (bytes of a multibyte character split across blocks are held back);
  a leading BOM counts in the offsets (the first piece's offset includes it) but is not part of the text.
* pdf: offsets are pages done.

Resume bookkeeping: after consuming pieces up to offset X, ``source.sha256`` is the sha256 of the byte
stream [0, X) (for pdf: of the whole file). Record ``(name, size, encoding, sha256, X)``; later call
``open_source(name, encoding=enc)``, check ``sha256_prefix(X) == sha256``, then ``pieces(start=X)``.

Following (``tail -F``): ``TextSource.follow(start, idle)`` reads a plain text file to its end, then keeps
reading what is appended, by polling (a stat and a read every ``poll`` seconds: cheap, and it works on
every filesystem, NFS included, where inotify does not). A truncated file is read again from its start; a
rotated one (another file now under the name) is read to its end, then the new one from its start; each
is announced by a :class:`Reopened` item, after which ``offset``/``sha256`` describe the new content. A
stream (stdin, FIFO) read with an ``idle`` callback waits for data with select(), so the caller gets
control back while the producer is quiet. ``idle()`` is called about every ``poll`` seconds of silence;
it may raise (to stop at once) or return True to end the stream there, as if the input had ended.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import itertools
import logging
import os
import re
import select
import stat
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import CometError, one_line

BLOCK = 1 << 20  # bytes read per block (so text pieces are at most ~1 MiB)
SNIFF = 64 << 10  # bytes sampled to detect encoding / binary content
SNIFF_PAUSE = 0.5  # a stream quiet this long (seconds) after its first bytes is sniffed with what came
FOLLOW_POLL = 0.25  # seconds between two looks at a followed file (or a quiet stream) with nothing new
NUL_WINDOW = 8 << 10  # NUL bytes in this many first bytes mean binary (unless UTF-16/32)
CONTROL_RATIO = 0.10  # more control / replacement characters than this in the sample means binary

_BOMS = (  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"PK\x03\x04", "zip archive"),
    (b"PK\x05\x06", "zip archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\x1f\x8b", "gzip data"),  # only reached for gzip inside gzip, or gzip on a stream
    (b"\xfd7zXZ\x00", "xz data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ufffd]")  # keeps \t \n \v \f \r and ESC

_PAGE_SEP = "\n\n"


class SourceError(CometError):
    """One-line, user-facing message starting with the input's name (the CLI prints it and exits 1)."""


@dataclass(frozen=True, slots=True)
class Piece:
    text: str  # decoded text, never empty
    offset: int  # offset AFTER this piece: bytes (uncompressed for gz) or pages for PDF


@dataclass(frozen=True, slots=True)
class Reopened:
    """Following a file: what comes next is new content read from its start (offset 0): the file was
    ``"rotated"`` (another file is now under the name; the old one was read to its end) or ``"truncated"``."""

    reason: str


Idle = Callable[[], bool]  # called while waiting for more input; True ends the stream there


class Source:
    """One input. Subclasses implement :meth:`pieces` and :meth:`sha256_prefix`.

    ``offset`` and ``sha256`` describe what :meth:`pieces` has yielded so far: the offset after the last
    piece (``start`` before the first) and the sha256 of the byte stream [0, offset). Both are updated
    just before each piece is yielded, so they can be saved together while handling that piece.
    """

    name: str  # path as given, or "-" for stdin
    kind: str  # "text" | "gz" | "pdf" | "stdin" (stdin also covers FIFOs and other non-seekable files)
    size: int | None  # bytes on disk (None for streams)
    unit: str  # "bytes" | "pages"
    total: int | None  # total units if known cheaply (file bytes for text, page count for pdf)
    encoding: str | None  # Python codec name used to decode (None for pdf)

    def __init__(
        self, name: str, kind: str, size: int | None, unit: str, total: int | None, encoding: str | None
    ) -> None:
        self.name, self.kind, self.size, self.unit, self.total = name, kind, size, unit, total
        self.encoding = encoding
        self.offset = 0
        self._hasher = hashlib.sha256()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind} encoding={self.encoding}>"

    def pieces(self, start: int = 0) -> Iterator[Piece]:
        """Stream the text from offset ``start`` (0 = beginning). Invalid ``start`` raises SourceError."""
        raise NotImplementedError

    def sha256_prefix(self, upto: int) -> str:
        """Hex sha256 of the byte stream [0, upto), read afresh from the input (see subclasses)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds open before it is read (a followed file); reading closes it too."""

    @property
    def sha256(self) -> str:
        """Hex sha256 of the byte stream [0, offset) consumed so far (for pdf: of the whole file)."""
        return self._hasher.hexdigest()

    def _error(self, message: str) -> SourceError:
        return SourceError(f"{self.name}: {message}")


class TextSource(Source):
    """Plain text or gzip-compressed text in a regular file: seekable, resumable, re-readable."""

    def __init__(self, path: str, kind: str, size: int, encoding: str, bom: int, held: BinaryIO | None = None
                 ) -> None:
        super().__init__(path, kind, size, "bytes", size if kind == "text" else None, encoding)
        self.bom = bom  # length of the BOM at the start of the byte stream (skipped when start == 0)
        self._prefix: tuple[int, hashlib._Hash] | None = None  # (upto, hasher) from sha256_prefix
        self._held = held  # to follow: the file as opened by open_source (used by the first follow())

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _open(self) -> BinaryIO:
        try:
            return gzip.open(self.name, "rb") if self.kind == "gz" else open(self.name, "rb")
        except OSError as e:
            raise _os_error(self.name, e) from None

    def _read(self, stream: BinaryIO, n: int) -> bytes:
        try:
            return stream.read(n)
        except (OSError, EOFError, zlib.error) as e:
            if self.kind == "gz":
                raise self._error(f"corrupt gzip data ({one_line(e)})") from None
            raise _os_error(self.name, e) from None

    def _skip(self, stream: BinaryIO, n: int, hasher: hashlib._Hash) -> int:
        """Read and hash the next ``n`` bytes of ``stream``; return how many there were."""
        done = 0
        while done < n:
            block = self._read(stream, min(BLOCK, n - done))
            if not block:
                break
            hasher.update(block)
            done += len(block)
        return done

    def sha256_prefix(self, upto: int) -> str:
        """Hex sha256 of bytes [0, upto): file bytes for text, *uncompressed* bytes for gz.

        If the input is shorter than ``upto`` the hash covers what there is (so it will not match).
        The state is kept, so a following ``pieces(start=upto)`` does not hash the prefix again.
        """
        hasher = hashlib.sha256()
        with self._open() as stream:
            self._skip(stream, max(upto, 0), hasher)
        self._prefix = (upto, hasher.copy())
        return hasher.hexdigest()

    def pieces(self, start: int = 0) -> Iterator[Piece]:
        if start < 0 or (self.total is not None and start > self.total):
            raise self._error(f"offset {start} is outside the input (0..{self.total})")
        return self._pieces(start)

    def _pieces(self, start: int) -> Iterator[Piece]:
        with self._open() as stream:
            self._seek(stream, start)
            blocks = iter(lambda: self._read(stream, BLOCK), b"")
            yield from _decode(self, blocks, check_empty=start == 0)

    def _seek(self, stream: BinaryIO, start: int) -> None:
        """Position `stream` at `start` (past the BOM for 0), with offset and hasher to match."""
        if start and self._prefix and self._prefix[0] == start and self.kind == "text":
            hasher = self._prefix[1].copy()
            stream.seek(start)
        else:
            hasher = hashlib.sha256()
            n = start or self.bom
            if self._skip(stream, n, hasher) < n:
                raise self._error(f"offset {start} is past the end of the input")
        self.offset, self._hasher = start or self.bom, hasher

    # --- following ------------------------------------------------------------------------------------

    def follow(self, start: int = 0, idle: Idle | None = None, poll: float = FOLLOW_POLL
               ) -> Iterator[Piece | Reopened]:
        """Like ``pieces(start)``, then keep reading what is appended to the file, across truncation and
        rotation (see the module docstring). Ends only when ``idle()`` returns True (or raises).

        ``size``/``total`` follow the file's current size. A truncation is seen when the file is shorter
        than what was read; one followed by a regrowth past that point between two polls is not (as with
        ``tail -f``). The first piece of a new file loses a leading BOM (the offsets count it)."""
        if self.kind != "text":
            raise self._error("only plain text files can be followed (not gzip)")
        if start < 0:
            raise self._error(f"offset {start} is outside the input")
        return self._follow(start, idle or (lambda: False), poll)

    def _follow(self, start: int, idle: Idle, poll: float) -> Iterator[Piece | Reopened]:
        stream, self._held = self._held or self._open(), None
        try:
            stream.seek(0)
            self._seek(stream, start)
            new_content = False  # the first content starts where asked (its BOM, if any, skipped by _seek)
            while True:
                change = yield from self._follow_content(stream, idle, poll, strip_bom=new_content)
                if change is None:
                    return
                if change == "rotated":
                    stream.close()
                    stream = None
                    stream = self._open_new(idle, poll)
                    if stream is None:
                        return
                else:
                    stream.seek(0)
                self.size = self.total = os.fstat(stream.fileno()).st_size
                self.offset, self._hasher, new_content = 0, hashlib.sha256(), True
                yield Reopened(change)
        finally:
            if stream is not None:
                stream.close()

    def _follow_content(self, stream: BinaryIO, idle: Idle, poll: float, strip_bom: bool):
        """Pieces of one file's content from the stream's position on; returns how it ended: "rotated",
        "truncated", or None (idle() ended it)."""
        change = None

        def blocks() -> Iterator[bytes]:
            nonlocal change
            while True:
                block = self._read(stream, BLOCK)
                if block:
                    self.size = self.total = max(self.size or 0, stream.tell())
                    yield block
                    continue
                change = self._changed(stream)
                if change == "rotated":  # what the writer added to the old file just before the switch
                    block = self._read(stream, BLOCK)
                    if block:
                        change = None
                        yield block
                        continue
                if change is not None or idle():
                    return
                time.sleep(poll)

        for piece in _decode(self, blocks(), check_empty=False):
            if strip_bom:
                strip_bom = False
                if piece.text.startswith("\ufeff"):
                    if len(piece.text) == 1:
                        continue
                    piece = Piece(piece.text[1:], piece.offset)
            yield piece
        return change

    def _changed(self, stream: BinaryIO) -> str | None:
        """At the end of what the file holds: "truncated", "rotated" or None (nothing yet); updates size."""
        try:
            st = os.fstat(stream.fileno())
        except OSError as e:
            raise _os_error(self.name, e) from None
        if st.st_size < stream.tell():
            return "truncated"
        self.size = self.total = st.st_size
        try:
            now = os.stat(self.name)
        except FileNotFoundError:  # renamed away and not yet replaced (or deleted): keep the old one
            return None
        except OSError as e:
            raise _os_error(self.name, e) from None
        return "rotated" if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) else None

    def _open_new(self, idle: Idle, poll: float) -> BinaryIO | None:
        """The file now under the name (waiting while there is none); None if idle() ends the wait."""
        while True:
            try:
                return open(self.name, "rb")
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _os_error(self.name, e) from None
            if idle():
                return None
            time.sleep(poll)


class StreamSource(Source):
    """stdin (or a FIFO): read once, from the start only; the sniffed sample is replayed first.

    A stream with a file descriptor is read with os.read (no buffering layer in between), waiting with
    select() when ``pieces`` gets an ``idle`` callback, so the caller keeps control while the producer is
    quiet (``journalctl -f | comet read -``)."""

    def __init__(self, name: str, stream: BinaryIO, sample: bytes, encoding: str, bom: int,
                 fd: int | None = None) -> None:
        super().__init__(name, "stdin", None, "bytes", None, encoding)
        self.bom = bom
        self._stream: BinaryIO | None = stream
        self._sample = sample
        self._fd = fd

    def sha256_prefix(self, upto: int) -> str:
        raise self._error("a stream cannot be re-read to verify a resume point")

    def pieces(self, start: int = 0, idle: Idle | None = None, poll: float = FOLLOW_POLL) -> Iterator[Piece]:
        if start != 0:
            raise self._error("a stream cannot be resumed (start must be 0)")
        if self._stream is None:
            raise self._error("a stream can only be read once")
        stream, sample, fd = self._stream, self._sample, self._fd
        self._stream, self._sample = None, b""
        self._hasher = hashlib.sha256(sample[: self.bom])
        self.offset = self.bom
        read = getattr(stream, "read1", stream.read)  # read1: hand on whatever is available

        def more() -> bytes:
            try:
                if fd is None:
                    return read(BLOCK)
                while idle is not None and not _readable(fd, poll):
                    if idle():
                        return b""  # ended by the caller: like the end of the input
                return os.read(fd, BLOCK)
            except OSError as e:
                raise _os_error(self.name, e) from None

        blocks = itertools.chain([sample[self.bom :]], iter(more, b""))
        return _decode(self, blocks, check_empty=True)


class PdfSource(Source):
    """A PDF read page by page with pypdf; offsets are pages done. ``errors`` lists pages that failed."""

    def __init__(self, path: str, size: int, pages: int) -> None:
        super().__init__(path, "pdf", size, "pages", pages, None)
        self.errors: list[str] = []
        self._file_sha: str | None = None

    @property
    def sha256(self) -> str:
        if self._file_sha is None:
            self._file_sha = self.sha256_prefix(0)
        return self._file_sha

    def sha256_prefix(self, upto: int) -> str:
        """Hex sha256 of the whole file, whatever ``upto`` is (pages cannot be hashed on their own)."""
        hasher = hashlib.sha256()
        try:
            with open(self.name, "rb") as f:
                for block in iter(lambda: f.read(BLOCK), b""):
                    hasher.update(block)
        except OSError as e:
            raise _os_error(self.name, e) from None
        return hasher.hexdigest()

    def pieces(self, start: int = 0) -> Iterator[Piece]:
        if not 0 <= start <= (self.total or 0):
            raise self._error(f"page offset {start} is outside the document (0..{self.total})")
        return self._pieces(start)

    def _pieces(self, start: int) -> Iterator[Piece]:
        self.offset, self.errors = start, []
        yielded = False
        try:
            f = open(self.name, "rb")  # closed below; pypdf reads lazily from it
        except OSError as e:
            raise _os_error(self.name, e) from None
        with f:
            reader = _pdf_reader(self.name, f)
            for i in range(start, self.total or 0):
                try:
                    text = (reader.pages[i].extract_text() or "").strip()
                except Exception as e:  # pypdf raises many kinds of errors on damaged pages
                    self.errors.append(f"page {i + 1}: {one_line(e)}")
                    text = ""
                self.offset = i + 1
                if text:
                    yielded = True
                    yield Piece(text + _PAGE_SEP, i + 1)
        if start == 0 and not yielded:
            if self.errors:
                raise self._error(f"cannot read PDF ({self.errors[0]})")
            raise self._error("PDF has no extractable text (scanned?)")


def open_source(path: str, stdin: BinaryIO | None = None, encoding: str | None = None,
                follow: bool = False) -> Source:
    """Validate an input and return its Source; raise SourceError with a one-line message if unusable.

    ``path`` "-" reads ``stdin`` (default ``sys.stdin.buffer``); its first 64 KiB (or what comes before
    it pauses) are read here to sniff the content. ``encoding`` forces a codec for text (pass the recorded
    ``source.encoding`` when resuming); otherwise UTF-8 (BOM stripped), a UTF-16/32 BOM, or
    charset-normalizer's guess is used. ``follow``: the file is to be followed (TextSource.follow), so
    an empty or blank one is fine (UTF-8 unless forced) and gzip or PDF is refused.
    """
    if encoding is not None:
        try:
            encoding = _codec_name(encoding)
        except LookupError:
            raise SourceError(f"{path}: unknown encoding {encoding!r}") from None
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _open_stream(path, stream, encoding)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_error(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path}: is a directory, not a file")
    try:
        f = open(path, "rb")  # a FIFO's stream is kept open by its Source
    except OSError as e:
        raise _os_error(path, e) from None
    if not stat.S_ISREG(st.st_mode):  # FIFO, /dev/fd/N, character device: a one-shot stream
        return _open_stream(path, f, encoding)
    if follow:  # keep the file open: it is the one to read to its end, even if rotated before reading starts
        try:
            return _open_followed(path, f, st.st_size, encoding)
        except BaseException:
            f.close()
            raise
    with f:
        try:
            head = _read_full(f, SNIFF)
        except OSError as e:
            raise _os_error(path, e) from None
    if not head:
        raise SourceError(f"{path}: input is empty")
    if head.startswith(b"\x1f\x8b"):
        return _open_gzip(path, st.st_size, encoding)
    if b"%PDF-" in head[:1024]:
        return _open_pdf(path, st.st_size)
    enc, bom = _sniff(path, head, complete=len(head) == st.st_size, forced=encoding)
    return TextSource(path, "text", st.st_size, enc, bom)


def _open_followed(path: str, f: BinaryIO, size: int, forced: str | None) -> TextSource:
    """A regular file to follow, open in `f` (kept by the source). Empty or blank is fine (UTF-8 unless
    forced): the log may just have been created; gzip and PDF are refused."""
    try:
        head = _read_full(f, SNIFF)
    except OSError as e:
        raise _os_error(path, e) from None
    if head.startswith(b"\x1f\x8b") or b"%PDF-" in head[:1024]:
        what = "gzip" if head.startswith(b"\x1f\x8b") else "PDF"
        raise SourceError(f"{path}: {what} files cannot be followed (--follow reads growing text files)")
    if head.strip():
        enc, bom = _sniff(path, head, complete=False, forced=forced)  # a writer may be mid-character
    else:
        enc, bom = forced or "utf-8", 0
    return TextSource(path, "text", size, enc, bom, held=f)


def estimate_tokens(source: Source, count_tokens: Callable[[str], int] | None = None) -> int | None:
    """Cheap token pre-count for progress / ETA, or None when unknown (stdin, gz).

    Text: up to three 64 KiB windows (start, middle, end) are decoded and counted, with ``count_tokens``
    (e.g. the model tokenizer's ``lambda s: len(tok.encode(s))``) or a rough built-in rule (about 4 ASCII
    characters per token, one token per other character); the file size is scaled by the bytes/token seen.
    PDF: text of up to three pages (spread over the document) times the page count.
    """
    count = count_tokens or _rough_tokens
    if isinstance(source, TextSource) and source.kind == "text":
        size = source.size or 0
        spots = sorted({0, max(0, size // 2 - SNIFF // 2) & ~3, max(0, size - SNIFF) & ~3})  # UTF-16/32 safe
        n_bytes = n_tokens = 0
        try:
            with open(source.name, "rb") as f:
                for spot in spots:
                    f.seek(spot)
                    data = f.read(SNIFF)
                    n_bytes += len(data)
                    n_tokens += count(data.decode(source.encoding or "utf-8", errors="replace"))
        except OSError:
            return None
        return round(size * n_tokens / n_bytes) if n_bytes else 0
    if isinstance(source, PdfSource) and source.total:
        return _estimate_pdf(source, count)
    return None


# --- helpers -----------------------------------------------------------------------------------------


def _decode(source: Source, blocks: Iterable[bytes], check_empty: bool) -> Iterator[Piece]:
    """Decode byte blocks incrementally into pieces, advancing ``source.offset`` / ``source._hasher``.

    Bytes the decoder holds back (an incomplete character at a block end) are neither counted in the
    offset nor hashed until a later block completes them, so every offset is a clean restart point.
    """
    decoder = codecs.getincrementaldecoder(source.encoding or "utf-8")(errors="replace")
    pos = source.offset  # bytes fed to the decoder so far, counted from the start of the stream
    carry = b""  # fed but held back by the decoder: not hashed yet
    seen_text = False
    for block in blocks:
        if not block:
            continue
        text = decoder.decode(block)
        pos += len(block)
        data = carry + block if carry else block
        cut = len(data) - len(decoder.getstate()[0])
        source._hasher.update(memoryview(data)[:cut])
        carry = data[cut:]
        source.offset = pos - len(carry)
        if text:
            seen_text = seen_text or not text.isspace()
            yield Piece(text, source.offset)
    text = decoder.decode(b"", final=True)
    source._hasher.update(carry)
    source.offset = pos
    if text:
        seen_text = seen_text or not text.isspace()
        yield Piece(text, pos)
    if check_empty and not seen_text:
        raise source._error("input is empty")


def _open_stream(name: str, stream: BinaryIO, forced: str | None) -> StreamSource:
    fd = _stream_fd(stream)
    try:
        if fd is None:
            head = _read_full(stream, SNIFF)
            complete = len(head) < SNIFF
        else:
            head, complete = _read_head(fd, SNIFF)
    except OSError as e:
        raise _os_error(name, e) from None
    if head.startswith(b"\x1f\x8b"):
        raise SourceError(f"{name}: gzip data on a stream is not supported (pass the .gz file, or use zcat)")
    if head.startswith(b"%PDF-"):
        raise SourceError(f"{name}: PDF on a stream is not supported (pass the .pdf file)")
    enc, bom = _sniff(name, head, complete=complete, forced=forced)
    return StreamSource(name, stream, head, enc, bom, fd)


def _stream_fd(stream: BinaryIO) -> int | None:
    """The OS file descriptor under a stream not read from yet (None for in-memory streams)."""
    try:
        fd = stream.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None
    return fd


def _readable(fd: int, timeout: float) -> bool:
    """Whether `fd` has data (or its end) within `timeout` seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


def _read_head(fd: int, n: int) -> tuple[bytes, bool]:
    """Up to `n` first bytes of a stream, and whether they are all of it. Waits for the first bytes, then
    takes what arrives until the stream pauses (SNIFF_PAUSE): a slow producer (a log being written) is
    sniffed with its first lines instead of being waited for until 64 KiB have come."""
    parts, got = [], 0
    while got < n:
        if got and not _readable(fd, SNIFF_PAUSE):
            return b"".join(parts), False
        data = os.read(fd, n - got)
        if not data:
            return b"".join(parts), True
        parts.append(data)
        got += len(data)
    return b"".join(parts), False


def _open_gzip(path: str, size: int, forced: str | None) -> TextSource:
    try:
        with gzip.open(path, "rb") as g:
            head = _read_full(g, SNIFF)
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"{path}: corrupt gzip data ({one_line(e)})") from None
    if not head:
        raise SourceError(f"{path}: input is empty")
    if head.startswith(b"%PDF-"):
        raise SourceError(f"{path}: compressed PDF is not supported (decompress it first)")
    enc, bom = _sniff(path, head, complete=len(head) < SNIFF, forced=forced)
    return TextSource(path, "gz", size, enc, bom)


def _open_pdf(path: str, size: int) -> PdfSource:
    try:
        with open(path, "rb") as f:
            pages = len(_pdf_reader(path, f).pages)
    except OSError as e:
        raise _os_error(path, e) from None
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{path}: cannot read PDF ({one_line(e)})") from None
    return PdfSource(path, size, pages)


def _pdf_reader(path: str, f: BinaryIO):  # -> pypdf.PdfReader
    """Open a PdfReader on an open file (pypdf then reads lazily), decrypting with the empty password."""
    from pypdf import PasswordType, PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(f)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise SourceError(f"{path}: PDF is encrypted")
    except SourceError:
        raise
    except Exception as e:
        if "encrypt" in str(e).lower() or "password" in str(e).lower():
            raise SourceError(f"{path}: PDF is encrypted ({one_line(e)})") from None
        raise SourceError(f"{path}: cannot read PDF ({one_line(e)})") from None
    return reader


def _estimate_pdf(source: PdfSource, count: Callable[[str], int]) -> int | None:
    n = source.total or 0
    deadline = time.monotonic() + 0.15
    counts = []
    try:
        with open(source.name, "rb") as f:
            reader = _pdf_reader(source.name, f)
            for i in sorted({n // 4, n // 2, (3 * n) // 4}):
                counts.append(count(reader.pages[i].extract_text() or ""))
                if time.monotonic() > deadline:
                    break
    except Exception:
        return None
    return round(n * sum(counts) / len(counts)) if counts else None


def _sniff(name: str, head: bytes, complete: bool, forced: str | None) -> tuple[str, int]:
    """Choose the codec for a text input from its first bytes; return (codec, BOM length).

    Raises SourceError for binary content or when the whole input (``complete``) is blank.
    """
    binary = SourceError(f"{name}: looks like a binary file, not text")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise SourceError(f"{name}: looks like a binary file, not text ({what})")
    bom_enc, bom = next(((enc, len(b)) for b, enc in _BOMS if head.startswith(b)), (None, 0))
    if forced:
        enc = forced
        if not (bom_enc and bom_enc.startswith(forced)):  # e.g. forced "utf-16" + a UTF-16-LE BOM
            bom = 0
        else:
            enc = bom_enc
    elif bom_enc:
        enc = bom_enc
    elif b"\x00" in head[:NUL_WINDOW]:
        enc = _detect(head)
        if not enc or not enc.startswith(("utf-16", "utf-32")):
            raise binary
    elif _is_utf8(head, complete):
        enc = "utf-8"
    else:
        enc = _detect(head)
        if not enc:
            raise binary
    decoder = codecs.getincrementaldecoder(enc)(errors="replace")
    text = decoder.decode(head[bom:], final=complete)
    if text and len(_CONTROL.findall(text)) > CONTROL_RATIO * len(text):
        raise binary
    if complete and not text.strip():
        raise SourceError(f"{name}: input is empty")
    return enc, bom


def _is_utf8(head: bytes, complete: bool) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _detect(head: bytes) -> str | None:
    """charset-normalizer's guess, preferring cp1252 among equally good Western candidates."""
    from charset_normalizer import from_bytes

    results = list(from_bytes(head))
    if not results:
        return None
    best = results[0]
    for r in results:
        if r.encoding == "cp1252" and (r.chaos, r.coherence) == (best.chaos, best.coherence):
            best = r
    try:
        return _codec_name(best.encoding)
    except LookupError:
        return None


def _codec_name(encoding: str) -> str:
    """Normalized Python codec name ("UTF8" -> "utf-8"); "utf-8-sig" becomes "utf-8" (BOM handled here)."""
    name = codecs.lookup(encoding).name
    return "utf-8" if name == "utf-8-sig" else name


def _rough_tokens(text: str) -> int:
    n_ascii = len(text.encode("ascii", "ignore"))
    return max(1, round(n_ascii / 4 + (len(text) - n_ascii)))


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, or fewer only at end of stream (raw streams and pipes may return short reads)."""
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _os_error(path: str, e: BaseException) -> SourceError:
    if isinstance(e, FileNotFoundError):
        return SourceError(f"{path}: no such file")
    if isinstance(e, PermissionError):
        return SourceError(f"{path}: permission denied")
    if isinstance(e, IsADirectoryError):
        return SourceError(f"{path}: is a directory, not a file")
    return SourceError(f"{path}: {getattr(e, 'strerror', None) or one_line(e)}")



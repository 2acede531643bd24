"""Pixel data: transfer syntaxes, locating the pixel element without reading it, bounded
inflation of deflated files, and decoding to float32 with the modality LUT applied.

Decoding reads a file's pixel bytes once, at the offset the header pass recorded, and
hands them to pydicom's decoder with the header's image options: no second header parse.
Files that need the whole data set (big endian, deflated, a modality LUT sequence) are
parsed again, within the size the header pass checked.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from cad.io.files import open_regular
from cad.io.outcome import CodecError, CorruptError, safe_reason

if TYPE_CHECKING:
    from cad.io.header import FileRecord

IMPLICIT, EXPLICIT, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE = {IMPLICIT, EXPLICIT, BIG, DEFLATED}
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData"}
PIXEL_TAGS |= {0x7FE00009: "DoubleFloatPixelData"}
# Plausibility limits, checked before anything is allocated for a file's pixels.
MAX_PIXELS = 2**29  # rows x columns x frames: 2 GiB as float32
MAX_RATIO = 2000  # decoded / encapsulated bytes beyond this is not an image but a claim
RATIO_FLOOR = 16 * 2**20  # below this many decoded bytes, any ratio is allowed
HEADER_KEEP = 16 * 2**20  # a deflated data set's header must inflate within this
TRAILER_SLACK = 2**16  # bytes allowed after the pixel data of a deflated data set
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_NAMES = {"1.2.840.10008.1.2.4.110": "JPEG XL Lossless", "1.2.840.10008.1.2.4.112": "JPEG XL"}


def uid_name(uid: str, kind: str) -> str:
    """A standard name for a SOP class / transfer syntax UID (PHI-free)."""
    name = _NAMES.get(uid) or (UID(uid).name if uid else "")
    return f"unrecognised {kind}" if not name or name == uid else f"{kind} {name}"


def transfer_syntax(ds: Dataset) -> str:
    ts = (getattr(ds, "file_meta", None) or Dataset()).get("TransferSyntaxUID")
    implicit, little = ds.original_encoding
    return str(ts) if ts else IMPLICIT if implicit else EXPLICIT if little else BIG


def codec_problem(ts: str) -> str:
    name = uid_name(ts, "transfer syntax")
    try:
        decoder = get_decoder(UID(ts))
    except (NotImplementedError, ValueError):
        return f"{name} has no decoder in pydicom"
    return "" if decoder.is_available else f"{name}: decoder plugin not installed"


@dataclass
class Located:
    """Where a file's pixel data element is (found by seeking, never read)."""

    present: bool
    problem: str = ""
    keyword: str = "PixelData"
    offset: int = 0  # file offset of the value
    length: int = 0  # value bytes (encapsulated: the items, without the delimiter)
    fragments: int = 0  # encapsulated: items after the basic offset table


def locate(fp: BinaryIO, ds: Dataset, size: int, expected: int, native: bool) -> Located:
    """The pixel element after a stop-before-pixels read, checked against ``expected``
    decoded bytes and the ``size`` bytes actually present; seeks over the data."""
    implicit, little = ds.original_encoding
    order, head = "<" if little else ">", fp.read(8)
    group, elem = struct.unpack(order + "HH", head[:4]) if len(head) == 8 else (0, 0)
    keyword = PIXEL_TAGS.get(group << 16 | elem)
    if keyword is None:
        return Located(False)
    extra = head[4:8] if implicit else fp.read(4)
    if len(extra) < 4:
        return Located(True, f"pixel data truncated: 0 of {expected} bytes", keyword)
    (length,) = struct.unpack(order + "L", extra)
    start = fp.tell()
    if (length == 0xFFFFFFFF) == native:
        return Located(True, "pixel data encapsulation does not match the transfer syntax")
    if length == 0xFFFFFFFF:
        return _items(fp, size, expected, keyword, start)
    available = max(size - start, 0)
    if length < expected:
        problem = f"pixel data length does not match: {length} of {expected} bytes"
    elif available < expected:
        problem = f"pixel data truncated: {available} of {expected} bytes"
    else:
        problem = ""
    return Located(True, problem, keyword, start, min(length, available))


def _items(fp: BinaryIO, size: int, expected: int, keyword: str, start: int) -> Located:
    """Walk encapsulated items by seeking; check they can hold the claimed matrix."""
    items, stored = 0, 0
    while True:
        item = fp.read(8)
        if len(item) < 8:
            return Located(True, f"encapsulated pixel data truncated after {items} items")
        group, elem, item_len = struct.unpack("<HHL", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000):
            return Located(True, "encapsulated pixel data is malformed")
        if fp.tell() + item_len > size:
            return Located(True, f"encapsulated pixel data truncated in item {items + 1}")
        fp.seek(item_len, os.SEEK_CUR)
        stored += item_len if items else 0  # the first item is the basic offset table
        items += 1
    found = Located(True, "", keyword, start, fp.tell() - 8 - start, max(items - 1, 0))
    if items < 2:
        found.problem = "encapsulated pixel data has no frames"
    elif expected > max(RATIO_FLOOR, MAX_RATIO * stored):
        found.problem = (
            f"header matrix needs {expected} bytes, {MAX_RATIO}x more than the "
            f"{stored} compressed bytes present"
        )
    return found


def meta_end(fp: BinaryIO) -> tuple[str, int]:
    """(TransferSyntaxUID, offset after the file meta group) of a file with a preamble.

    Hand-written because pydicom inflates a deflated data set whole as soon as it has
    read the meta group; this reads the group-2 elements (explicit VR little endian) only.
    """
    fp.seek(132)
    ts = ""
    while True:
        at = fp.tell()
        head = fp.read(6)
        if len(head) < 6 or struct.unpack("<H", head[:2])[0] != 2:
            return ts, at
        elem, vr = struct.unpack("<H", head[2:4])[0], head[4:6]
        size = fp.read(6)[2:] if vr in _LONG_VRS else fp.read(2)
        if len(size) not in (2, 4):
            return ts, at
        (length,) = struct.unpack("<L" if len(size) == 4 else "<H", size)
        if length == 0xFFFFFFFF:
            return ts, at
        if elem == 0x0010:
            ts = fp.read(length).rstrip(b"\x00 ").decode("ascii", "replace")
        else:
            fp.seek(length, os.SEEK_CUR)


class Inflater:
    """Streams a raw deflate stream from ``fp``; keeps only a bounded prefix in memory."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp, self.z, self.total = fp, zlib.decompressobj(-zlib.MAX_WBITS), 0
        self.done = False

    def _more(self, limit: int) -> bytes:
        while not self.done:
            data = self.z.unconsumed_tail or self.fp.read(2**16)
            if not data:
                self.done = True
                break
            out = self.z.decompress(data, limit)
            self.total += len(out)
            self.done = self.z.eof
            if out:
                return out
        return b""

    def prefix(self, keep: int) -> bytes:
        out = bytearray()
        while len(out) < keep and (chunk := self._more(keep - len(out))):
            out += chunk
        return bytes(out)

    def rest_fits(self, limit: int) -> bool:
        """Inflate the rest, discarding it; False as soon as the total exceeds ``limit``."""
        while self.total <= limit and self._more(2**20):
            pass
        return self.total <= limit


def read_deflated(fp: BinaryIO, pixels: Callable[[Dataset], int]) -> tuple[Dataset, Located]:
    """Header and pixel element of a deflated file, inflating at most what its own
    header describes (a small file that inflates to GBs is refused, not read whole).
    ``pixels(ds)`` gives the decoded bytes the header claims (-1: no image elements)."""
    ts, start = meta_end(fp)
    fp.seek(0)
    meta = pydicom.dcmread(io.BytesIO(fp.read(start)), force=True).file_meta
    fp.seek(start)
    inflater = Inflater(fp)
    prefix = inflater.prefix(HEADER_KEEP)
    buffer = io.BytesIO(prefix)
    stop = lambda tag, vr, length: tag in PIXEL_TAGS  # noqa: E731
    ds = pydicom.filereader.read_dataset(buffer, False, True, stop_when=stop)
    ds.file_meta = meta
    ds.set_original_encoding(False, True, ds._character_set)
    if buffer.tell() >= len(prefix) and not inflater.done:
        return ds, Located(True, f"deflated header inflates beyond {HEADER_KEEP >> 20} MiB")
    expected = pixels(ds)
    located = Located(False) if expected < 0 else Located(True)
    if expected >= 0:
        at = buffer.tell()
        limit = at + 12 + expected + TRAILER_SLACK
        if not inflater.rest_fits(limit):
            located.problem = (
                f"deflated data set inflates to more than {limit} bytes, beyond the "
                f"{expected} pixel bytes its header describes"
            )
            return ds, located
        buffer.seek(at)
        located = locate(buffer, ds, inflater.total, expected, True)
        located.offset = 0  # an offset into the inflated stream: decode re-reads the file
    return ds, located


def _file_bytes(record: FileRecord) -> bytes:
    """The pixel value bytes at the recorded offset (one read, no header parse)."""
    fd = open_regular(record.path)
    with os.fdopen(fd, "rb", buffering=0) as fp:
        st = os.fstat(fp.fileno())
        if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
            raise CorruptError("the file changed after its header was read")
        fp.seek(record.pixel_offset)
        data = fp.read(record.pixel_length)
    if len(data) != record.pixel_length:
        raise CorruptError("pixel data truncated while reading")
    return data


def pixel_bytes(record: FileRecord) -> bytes | None:
    """Raw pixel value bytes of a directly decodable file, else None."""
    return _file_bytes(record) if record.direct else None


def _full_dataset(record: FileRecord) -> Dataset:
    fd = open_regular(record.path)
    with os.fdopen(fd, "rb") as fp:
        st = os.fstat(fp.fileno())
        if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
            raise CorruptError("the file changed after its header was read")
        ds = pydicom.dcmread(fp, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax(ds))
    return ds


def decode(record: FileRecord) -> np.ndarray:
    """Pixel data as (frames, rows, cols) float32 with the modality LUT applied.

    MONOCHROME1 is inverted over the stored value range (``LUT(lo) + LUT(hi) - value``) so
    that bright always means high signal. Raises CodecError / CorruptError.
    """
    codec = codec_problem(record.transfer_syntax) if record.transfer_syntax else ""
    if codec:
        raise CodecError(codec)
    ds = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if record.direct:
                decoder = get_decoder(UID(record.transfer_syntax))
                arr = decoder.as_array(_file_bytes(record), **record.pixel_options)[0]
            else:
                ds = _full_dataset(record)
                arr = ds.pixel_array
        except CorruptError:
            raise
        except Exception as exc:  # noqa: BLE001 - readers and decoders fail in many ways
            raise CorruptError(f"pixel data cannot be decoded ({safe_reason(exc)})") from None
    arr, shape = arr[None] if arr.ndim == 2 else arr, (record.frames, record.rows, record.columns)
    if arr.shape != shape:
        raise CorruptError(f"decoded shape {arr.shape} does not match the header {shape}")
    if ds is not None and "ModalityLUTSequence" in ds:  # a lookup table (rare in MR)
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if len(record.slopes) != len(arr):
        raise CorruptError("the modality LUT does not match the number of frames")
    slope = np.array(record.slopes, np.float32)[:, None, None]
    intercept = np.array(record.intercepts, np.float32)[:, None, None]
    out = arr.astype(np.float32)  # the one conversion; the LUT is applied in place
    if not np.issubdtype(arr.dtype, np.integer) or np.any(slope != 1) or np.any(intercept):
        out *= slope  # (x * 1 + 0 is x exactly for the integers an image stores)
        out += intercept
    if str(record.pixel_options.get("photometric_interpretation")).upper() == "MONOCHROME1":
        opts = record.pixel_options
        bits = int(opts.get("bits_stored") or opts["bits_allocated"])
        signed = bool(opts.get("pixel_representation"))
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        out = (lo + hi) * slope + 2 * intercept - out  # LUT(lo) + LUT(hi) - value
    if not np.all(np.isfinite(out)):
        raise CorruptError("pixel data contains non-finite values")
    return out

"""Text and thumbnails inside compressed DICOM frames, blanked without re-encoding.

A JPEG, JPEG-LS or JPEG 2000 frame kept as it is (``defacer anonymize`` never decodes pixels)
carries the encoder's own metadata besides the picture: JPEG comment (COM) segments and
application segments (EXIF with dates, camera owner and a thumbnail; XMP; IPTC), a JFIF
thumbnail, JPEG 2000 comment (COM) segments and JP2 XML, UUID and IPR boxes, and bytes after
the end-of-image marker.  A converter may write the patient's name there.  Their contents are
overwritten with zeros in place: every length stays, so the encapsulation (fragment lengths,
the basic offset table) stays valid and the picture decodes exactly as before (decoders skip
these segments; the colour and ICC segments APP0's header, APP2 and APP14 are kept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: JPEG segments whose content goes: COM, and every APPn but APP0 (JFIF header), APP2 (ICC) and APP14 (Adobe).
_JPEG_BLANKED = frozenset({0xFE, 0xE1, *range(0xE3, 0xEE), 0xEF})
#: JP2 boxes whose content goes: XML, UUID (XMP and vendor data) and intellectual property rights.
_JP2_BLANKED = frozenset({b"xml ", b"uuid", b"jp2i"})


def _zero(data: bytearray, start: int, end: int) -> int:
    end = min(end, len(data))
    if start >= end or not any(data[start:end]):
        return 0
    data[start:end] = bytes(end - start)
    return 1


def _blank_jpeg(data: bytearray, at: int, end: int) -> int:
    """Blank the text segments of the JPEG (or JPEG-LS) stream starting with SOI at ``at``; return how many."""
    blanked = 0
    at += 2
    while at + 2 <= end:
        if data[at] != 0xFF:  # entropy-coded data: the next marker is an 0xFF followed by 0xC0-0xFE (not RSTn)
            at = data.find(b"\xff", at, end)
            if at < 0:
                return blanked
            continue
        marker = data[at + 1]
        if marker < 0xC0 or 0xD0 <= marker <= 0xD7 or marker == 0xFF:  # stuffing, restart marker or fill byte
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # EOI: anything after it is no part of the picture
            return blanked + _zero(data, at + 2, end)
        if marker == 0xD8 or at + 4 > end:
            at += 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        body = at + 4
        if marker in _JPEG_BLANKED:
            blanked += _zero(data, body, at + 2 + length)
        elif marker == 0xE0 and data[body:body + 5] == b"JFIF\x00":
            blanked += _zero(data, body + 14, at + 2 + length)  # keep version, units and density: the thumbnail goes
        elif marker == 0xE0 and data[body:body + 5] == b"JFXX\x00":
            blanked += _zero(data, body + 6, at + 2 + length)
        at += 2 + length  # after SOS: its entropy-coded data, walked above
    return blanked


def _blank_j2k(data: bytearray, at: int, end: int) -> int:
    """Blank the COM segments of the JPEG 2000 codestream starting with SOC at ``at``; return how many."""
    blanked = 0
    at += 2
    while at + 4 <= end:
        if data[at] != 0xFF:
            return blanked
        marker = data[at + 1]
        if marker == 0xD9:  # EOC
            return blanked + _zero(data, at + 2, end)
        if marker == 0x93:  # SOD without a known tile-part length: stop
            return blanked
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0x64:  # COM: Lcom, Rcom, then the text
            blanked += _zero(data, at + 6, at + 2 + length)
        if marker == 0x90:  # SOT: the header segments of this tile-part, then its data, then the next tile-part
            psot = int.from_bytes(data[at + 6:at + 10], "big")
            blanked += _blank_tile_part_header(data, at + 2 + length, min(end, at + psot) if psot else end)
            if not psot:
                return blanked
            at += psot
            continue
        at += 2 + length
    return blanked


def _blank_tile_part_header(data: bytearray, at: int, end: int) -> int:
    blanked = 0
    while at + 4 <= end and data[at] == 0xFF and data[at + 1] != 0x93:
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if data[at + 1] == 0x64:
            blanked += _zero(data, at + 6, at + 2 + length)
        at += 2 + length
    return blanked


def _blank_jp2(data: bytearray, at: int, end: int) -> int:
    """Blank the XML, UUID and IPR boxes of a JP2 file at ``at`` and the COM segments of its codestream."""
    blanked = 0
    while at + 8 <= end:
        size = int.from_bytes(data[at:at + 4], "big")
        kind = bytes(data[at + 4:at + 8])
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = int.from_bytes(data[at + 8:at + 16], "big"), 16
        box_end = end if size == 0 else min(end, at + size)
        if size and size < header:
            return blanked
        if kind in _JP2_BLANKED:
            blanked += _zero(data, at + header, box_end)
        elif kind == b"jp2c" and data[at + header:at + header + 2] == b"\xff\x4f":
            blanked += _blank_j2k(data, at + header, box_end)
        at = box_end
    return blanked


def blank_frame_text(frame: bytearray) -> int:
    """Blank the text segments of one compressed frame in place (same length); return how many were blanked."""
    if frame[:2] == b"\xff\xd8":
        return _blank_jpeg(frame, 0, len(frame))
    if frame[:2] == b"\xff\x4f":
        return _blank_j2k(frame, 0, len(frame))
    if frame[4:8] == b"jP  ":
        return _blank_jp2(frame, 0, len(frame))
    return 0


def blank_encapsulated_text(ds: Dataset) -> int:
    """Blank the text segments of every compressed frame of ``ds`` in place; return how many were blanked.

    Each fragment of the encapsulated Pixel Data that starts a JPEG, JPEG-LS, JPEG 2000 or JP2
    stream is walked (a frame's headers lie in its first fragment); native pixel data and
    fragments of other kinds are left as they are.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or not syntax.is_transfer_syntax or not syntax.is_encapsulated:
        return 0
    data = bytearray(ds.PixelData)
    blanked = 0
    at = 0
    while at + 8 <= len(data):  # items (FFFE,E000) + 32-bit length, little endian; the first is the offset table
        if data[at:at + 4] != b"\xfe\xff\x00\xe0":
            break
        length = int.from_bytes(data[at + 4:at + 8], "little")
        start, end = at + 8, min(len(data), at + 8 + length)
        if at:  # not the basic offset table
            fragment = data[start:end]
            count = blank_frame_text(fragment)
            if count:
                data[start:end] = fragment
                blanked += count
        at = end
    if blanked:
        ds.PixelData = bytes(data)
    return blanked

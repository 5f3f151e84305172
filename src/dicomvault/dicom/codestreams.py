"""The image geometry a compressed frame declares in its own codestream header, read without
decoding: the start-of-frame segment of JPEG (every process) and JPEG-LS, the SIZ segment of
JPEG 2000.

Why it matters: the decoders (libjpeg inside GDCM, CharLS, OpenJPEG inside Pillow) size their
output from the codestream, not from the DICOM header that `pixels.check_decodable` budgets. A file
may declare 8 x 8 pixels in its header and 65535 x 65535 in its codestream; comparing the two before
any decoder runs keeps the budget honest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # baseline
        "1.2.840.10008.1.2.4.51",  # extended
        "1.2.840.10008.1.2.4.57",  # lossless, process 14
        "1.2.840.10008.1.2.4.70",  # lossless, process 14 selection value 1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    }
)
JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

# Start-of-frame markers: SOF0-SOF15 less DHT (C4), JPG (C8) and DAC (CC), plus JPEG-LS's SOF55 (F7),
# whose frame header has the same layout.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
# Markers without a length: TEM, the restart markers RST0-7 (SOI is consumed first).
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class CodestreamGeometry:
    """What a codestream says it decodes to."""

    rows: int
    columns: int
    components: int
    precision: int


def codestream_geometry(frame: bytes, transfer_syntax: str) -> CodestreamGeometry | None:
    """The geometry `frame` declares, None for a syntax whose frames carry none (native, RLE:
    their decoders size everything from the DICOM header). ValueError when the header is missing
    or truncated, which no decoder would accept either."""
    if transfer_syntax in JPEG_SYNTAXES:
        return _jpeg_geometry(frame)
    if transfer_syntax in JPEG2000_SYNTAXES:
        return _jpeg2000_geometry(frame)
    return None


def _jpeg_geometry(frame: bytes) -> CodestreamGeometry:
    # libjpeg and CharLS both insist on SOI as the first two bytes; so do we.
    if frame[:2] != b"\xff\xd8":
        raise ValueError("the frame does not start with a JPEG start-of-image marker")
    position = 2
    while position + 4 <= len(frame):
        if frame[position] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {position} before the frame header")
        marker = frame[position + 1]
        if marker == 0xFF:  # a fill byte before the marker proper
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (_SOS, _EOI):
            break
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or position + 2 + length > len(frame):
                raise ValueError("truncated JPEG frame header")
            return CodestreamGeometry(
                precision=frame[position + 4],
                rows=int.from_bytes(frame[position + 5 : position + 7], "big"),
                columns=int.from_bytes(frame[position + 7 : position + 9], "big"),
                components=frame[position + 9],
            )
        if length < 2:
            raise ValueError(f"invalid JPEG segment length {length} at byte {position}")
        position += 2 + length
    raise ValueError("no JPEG frame header before the scan data")


def _jpeg2000_geometry(frame: bytes) -> CodestreamGeometry:
    # A bare codestream starts with SOC then SIZ; a JP2 file (not what DICOM asks for, but seen)
    # carries the same codestream inside its boxes.
    start = frame.find(_J2K_SOC_SIZ)
    if start < 0:
        raise ValueError("no JPEG 2000 SIZ marker in the frame")
    siz = start + 4
    if len(frame) < siz + 39:
        raise ValueError("truncated JPEG 2000 SIZ segment")

    def u32(offset: int) -> int:
        return int.from_bytes(frame[siz + offset : siz + offset + 4], "big")

    return CodestreamGeometry(
        columns=u32(4) - u32(12),  # Xsiz - XOsiz
        rows=u32(8) - u32(16),  # Ysiz - YOsiz
        components=int.from_bytes(frame[siz + 36 : siz + 38], "big"),
        precision=(frame[siz + 38] & 0x7F) + 1,
    )

"""Payload compression of the RPV protocol: the codecs a session may negotiate in HELLO.

A client asks for one codec by setting its feature bit in the HELLO request; the server
answers with the bit set if it accepts (a server that does not know the bit, or lacks the
library, answers without it, and the client refuses the session). After that, WRITE request
payloads and successful READ reply payloads *may* carry the ``COMPRESSED`` header flag: the
payload is then one zstd frame (with its content size) or one raw LZ4 block, and it decodes
to exactly the request's ``length`` bytes, which the receiver already bounded by its
``max_payload``. A sender compresses only when it pays (see :meth:`Codec.compress`).

The libraries are the well-kept ``zstandard`` and ``lz4`` packages; nothing here is a codec.
Importing this module never fails when one is missing: that codec is just not available.
"""

from __future__ import annotations

from collections.abc import Callable

from .constants import FEATURE_LZ4, FEATURE_ZSTD

try:  # pragma: no cover - both are dependencies; a stripped install may lack one
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None
try:  # pragma: no cover
    import lz4.block as _lz4
except ImportError:  # pragma: no cover
    _lz4 = None

NONE = "none"
CODEC_NAMES = (NONE, "zstd", "lz4")
"""Values of the rpvclient ``compress`` attribute."""

FEATURES = {"zstd": FEATURE_ZSTD, "lz4": FEATURE_LZ4}
"""codec name -> its HELLO feature bit."""
COMPRESS_FEATURES = FEATURE_ZSTD | FEATURE_LZ4

MIN_COMPRESS = 1024
"""Payloads smaller than this are always sent as they are."""
KEEP_RATIO = 0.9
"""A compressed payload is sent only if it is smaller than this fraction of the original."""
SAMPLE_FROM = 64 * 1024
"""Payloads at least this large are sampled first, so incompressible data costs little."""
SAMPLE_SIZE = 4096
SAMPLE_RATIO = 0.97
"""Samples that compress to more than this fraction mark the payload incompressible."""
ZSTD_LEVEL = 1


class CodecError(ValueError):
    """Compressed bytes that do not decode to the declared size (a PAYLOAD_ERRORS member)."""


def available() -> tuple[str, ...]:
    """The codecs this process can use (the libraries that import), in preference order."""
    return tuple(n for n, mod in (("zstd", _zstd), ("lz4", _lz4)) if mod is not None)


def feature_codec(features: int) -> str | None:
    """The codec one feature bitmask selects (zstd first), or None."""
    for name, bit in FEATURES.items():
        if features & bit:
            return name
    return None


class Codec:
    """One negotiated codec of one connection (its compressor state is reused)."""

    def __init__(self, name: str) -> None:
        if name == "zstd" and _zstd is not None:
            self._c: Callable = _zstd.ZstdCompressor(level=ZSTD_LEVEL,
                                                     write_content_size=True).compress
            self._d = _zstd.ZstdDecompressor()
            self._errors: tuple = (_zstd.ZstdError,)
        elif name == "lz4" and _lz4 is not None:
            self._c = _lz4_compress
            self._d = None
            self._errors = (_lz4.LZ4BlockError,)
        else:
            raise ValueError(f"compression codec {name!r} is not available")
        self.name = name
        self.feature = FEATURES[name]

    def compress(self, data) -> bytes | None:
        """``data`` compressed, or None when that does not pay: too small, incompressible
        samples (large payloads), or a result not under ``KEEP_RATIO`` of the size."""
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size < MIN_COMPRESS:
            return None
        c = self._c
        if size >= SAMPLE_FROM:
            view = memoryview(data).cast("B")
            half = size // 2
            sample = b"".join((view[:SAMPLE_SIZE], view[half:half + SAMPLE_SIZE],
                               view[size - SAMPLE_SIZE:]))
            if len(c(sample)) > SAMPLE_RATIO * len(sample):
                return None
        out = c(data)
        return out if len(out) < KEEP_RATIO * size else None

    def decompress(self, data: bytes, size: int) -> bytes:
        """The ``size`` bytes ``data`` encodes; raises :class:`CodecError` on anything else
        (never allocates more than ``size`` bytes for the result)."""
        try:
            if self._d is not None:  # zstd: one frame, declaring exactly ``size``
                declared = _zstd.frame_content_size(data)
                if declared != size:
                    raise CodecError(f"zstd frame declares {declared} bytes, not {size}")
                out = self._d.decompress(data, max_output_size=size,
                                         read_across_frames=False, allow_extra_data=False)
            else:  # lz4: one raw block, its size implied by the request
                out = _lz4.decompress(data, uncompressed_size=size)
        except self._errors as exc:
            raise CodecError(f"corrupt {self.name} data: {exc}") from None
        if len(out) != size:
            raise CodecError(f"{self.name} data decodes to {len(out)} bytes, not {size}")
        return out


def _lz4_compress(data) -> bytes:
    return _lz4.compress(data, mode="fast", store_size=False)

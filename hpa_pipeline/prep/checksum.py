"""CRC-32 of archive members (the checksum 7z and zip archives list for each file).

Why not ``zlib.crc32``: Python's bundled zlib computes it byte-table by byte-table, a
noticeable part of a full-size sample's processing. zlib-ng's CRC-32 (carried by imagecodecs,
already a dependency for TIFF codecs) uses the CPU's carry-less multiply instructions: many
times faster, same values. ``zlib.crc32`` stays the fallback
for an imagecodecs built without zlib-ng.
"""
from __future__ import annotations

import zlib


def _fastest_crc32():
    try:
        import imagecodecs

        fast = imagecodecs.zlibng_crc32
        if fast(b"123456789") == zlib.crc32(b"123456789") and fast(b"89", zlib.crc32(b"1234567")) == zlib.crc32(
                b"123456789"):
            return fast
    except (ImportError, AttributeError):
        pass
    return zlib.crc32


#: ``crc32(data, value=0)``: the running CRC-32 of ``data`` after ``value``, as ``zlib.crc32``
crc32 = _fastest_crc32()

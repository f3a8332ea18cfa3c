"""A perceptual hash per sample and channel, for finding near-duplicate images across stores.

imagehash's pHash (the DCT hash bestfitting's solution used to match HPA v18 images to the
competition's): a channel is brought to 32x32 grey, its 2-D DCT taken, and each of the 8x8
lowest frequencies compared with their median, giving 64 bits. Computed from the smallest level
of a sample, already in memory while it is written (a few tenths of a millisecond per channel),
from 8-bit values (16-bit levels mapped as the uint8 store maps them), so a sample hashes alike
in a uint8 and a uint16 store. Stored as ``phash`` ``(n, 4)`` uint64 in the store.
"""
from __future__ import annotations

import numpy as np


def channel_hash(channel: np.ndarray) -> int:
    """The 64-bit pHash of one 2-D channel (uint8 or uint16), as an integer."""
    import imagehash
    from PIL import Image

    if channel.dtype == np.uint16:
        channel = np.clip(np.rint(channel / 257.0), 0, 255).astype(np.uint8)
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(channel))).hash.ravel()
    return int(np.packbits(bits).view(">u8")[0])


def sample_hashes(levels: dict[int, np.ndarray]) -> np.ndarray:
    """``(4,)`` uint64: each channel's pHash, from the smallest level of at least 32 pixels."""
    sizes = sorted(s for s in levels if s >= 32) or sorted(levels)
    image = levels[sizes[0]]
    return np.array([channel_hash(c) for c in image], dtype=np.uint64)

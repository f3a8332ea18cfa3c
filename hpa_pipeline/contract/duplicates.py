"""Near-duplicate samples from their perceptual hashes (``phash`` of the store contract).

The rule of the competition's 1st place: two samples match when the Hamming distance of their
64-bit pHashes is at most ``max_distance`` (12) on each of red, green and blue. Pairs are found
exactly, by comparing every sample's red hash with every other's in blocks (a bit count of the
XOR), then checking green and blue on the few candidates: about a minute for the 120,000
samples of train, test and HPA v18 together. Groups are the connected components of the pairs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: the command line reads the default below without it
    import numpy as np

#: bestfitting's distance on 64-bit hashes
DEFAULT_MAX_DISTANCE = 12
#: the channels a match must agree on (red, green, blue; yellow was not part of the rule)
MATCH_CHANNELS = (0, 1, 2)
_BLOCK = 2048


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distances of uint64 hashes (broadcast)."""
    import numpy as np

    return np.bitwise_count(np.bitwise_xor(a, b))


def find_pairs(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """``(m, 3)`` rows ``(i, j, distance)``: sample ``i`` of ``a`` matches sample ``j`` of ``b``
    (``b`` None: pairs within ``a``, ``i < j``). ``a`` and ``b`` are ``(n, 4)`` uint64 hashes;
    the distance given is the largest over the matched channels. Rows whose hashes are all zero
    (no hash stored) match nothing."""
    import numpy as np

    within = b is None
    b = a if within else b
    valid_a, valid_b = a.any(axis=1), b.any(axis=1)
    found = []
    for start in range(0, len(a), _BLOCK):
        block = a[start:start + _BLOCK]
        red = hamming(block[:, None, 0], b[None, :, 0])
        i, j = np.nonzero(red <= max_distance)
        i = i + start
        keep = valid_a[i] & valid_b[j] & ((i < j) if within else True)
        i, j = i[keep], j[keep]
        distances = np.stack([hamming(a[i, c], b[j, c]) for c in MATCH_CHANNELS], axis=1)
        match = (distances <= max_distance).all(axis=1)
        found.append(np.stack([i[match], j[match], distances[match].max(axis=1)], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), np.int64)


def groups_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """``(n,)`` group number of each sample: the connected components of ``pairs`` (union-find);
    a sample without a match is a group of its own. Groups are numbered by their first sample."""
    import numpy as np

    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs[:, :2]:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(x) for x in range(n)])

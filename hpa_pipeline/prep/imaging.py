"""Reading one HPA channel image and turning a sample's four channels into the store's levels.

Formats (:func:`read_image`, chosen by the file name's suffix): TIFF (below), PNG (the
competition's 512² ``train.zip``; 8- or 16-bit) and JPEG (the HPA v18 "external" downloads),
decoded by imagecodecs. One file holds one filter. The rule for a colour (RGB/RGBA) file:

- channels all equal (a grey image saved as RGB; a constant alpha is ignored): that grey;
- a ``red``, ``green`` or ``blue`` file in which neither other channel rises above the named
  one, save by less than 25 % of the named channel's total (summed over pixels): the named
  channel (a filter saved in its display colour);
- a ``yellow`` file whose blue channel likewise stays below the mean of red and green, and whose
  red and green agree (absolute difference under 25 % of that mean's total): their mean (yellow
  shown as red + green);
- anything else is ambiguous and refused, naming the file: which channel is the filter cannot
  be told.

Why "rises above", not "is empty": JPEG's 4:2:0 chroma subsampling makes a pure colour leak into
the other channels around sharp detail (isolated bright pixels in pure green, at quality 95,
leak 60 % of their brightness into red and blue), but the named channel stays the brightest
(the leakage rises above it by at most ~20 % of its total there); a composite of several stains
has other channels that are brighter than the named one wherever their own stain is.

TIFF edge cases (as met in microscopy archives), all read by tifffile with imagecodecs:

- strips or tiles; none, deflate (zlib/Adobe deflate), LZW, zstd, packbits compression;
- 8- or 16-bit unsigned grey (``uint8`` / ``uint16``); other sample formats are refused;
- a single page; a redundant leading or trailing axis of length 1 (``(1, H, W)``) is squeezed;
  an RGB or multi-page file is refused, since each HPA file holds exactly one filter;
- a truncated or corrupt file raises :class:`ImageError` naming the member and the cause.

Resampling is an area average (OpenCV ``INTER_AREA``: for integer factors, 2048→1024 and
3072→1024, it is the exact block mean; other ratios are area-weighted), kept at sub-grey-level
precision through the halvings and rounded once per level (see :func:`make_levels`). Integer
factors of 3 or more (3072→1024) are summed block by block instead (:func:`_block_mean`):
the same values in half the time.

16-bit sources become ``uint8`` by the linear full-range rule ``round(v / 257)`` (65535 → 255),
applied after averaging (so within one grey level of the float result); it keeps intensities
comparable across images, unlike per-image stretching. ``dtype="uint16"`` keeps the source values (8-bit sources are then stored as-is,
in a uint16 array).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ..contract.labels import FILTERS
from ..contract.spec import level_sizes  # noqa: F401 - re-exported: levels are part of the store contract
from ..contract.errors import HpaError

SUPPORTED_DTYPES = (np.uint8, np.uint16)
#: the most pixels one channel image may declare (16384²; the competition's are 2048² or 3072²):
#: checked from the header before anything is allocated, so a hostile or broken header that
#: declares 100,000² fails its sample instead of exhausting memory
MAX_PIXELS = 16384 * 16384
UINT16_TO_UINT8 = 257.0


class ImageError(HpaError, ValueError):
    """A TIFF that cannot be used: unreadable, wrong dtype or shape, channels that disagree."""


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
RGB_CHANNEL = {"red": 0, "green": 1, "blue": 2}
#: how much other channels may rise above the filter's own, as a share of its total (module docstring)
EXCESS_SHARE = 0.25


def read_image(source: bytes | str | Path, name: str | None = None, filt: str | None = None) -> np.ndarray:
    """One channel image (TIFF, PNG or JPEG, by the suffix of ``name`` or the path) as a 2-D
    uint8/uint16 array; colour files follow the module's rule for filter ``filt``."""
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "<bytes>")
    suffix = Path(label).suffix.lower()
    if suffix in ("", ".tif", ".tiff"):
        return read_tiff(source, name)
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{label}: not a TIFF, PNG or JPEG file")
    import imagecodecs

    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    _check_declared_size(_declared_shape(data, suffix), label)
    try:
        image = imagecodecs.png_decode(data) if suffix == ".png" else imagecodecs.jpeg8_decode(data)
    except Exception as exc:  # truncated or corrupt file
        raise ImageError(f"{label}: unreadable {suffix[1:].upper()} ({type(exc).__name__}: {exc})") from None
    if image.ndim == 3:
        image = _one_channel(image, filt, label)
    if image.ndim != 2:
        raise ImageError(f"{label}: shape {image.shape}, expected a single-channel 2-D image")
    if image.dtype not in SUPPORTED_DTYPES:
        raise ImageError(f"{label}: sample type {image.dtype}, expected uint8 or uint16")
    return image


def _check_declared_size(shape: tuple[int, ...] | None, label: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS` pixels per channel."""
    if shape is None:
        return
    height, width = (list(shape) + [1, 1])[:2]
    if height * width > MAX_PIXELS:
        raise ImageError(f"{label}: declares {width}x{height} pixels, over the limit of {MAX_PIXELS:,} per channel "
                         f"(the competition's images are 2048² or 3072²); not decoded")


def _declared_shape(data, suffix: str) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG's IHDR or a JPEG's SOF marker, without decoding; None when
    the header is not found (the decoder then reports the damage)."""
    data = memoryview(data)
    if suffix == ".png":
        if len(data) >= 24 and bytes(data[12:16]) == b"IHDR":
            return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        return None
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        at += 2 + length
    return None


def _mostly_below(others: list[np.ndarray], named: np.ndarray) -> bool:
    """Each of ``others`` rises above ``named`` by, summed over pixels, under EXCESS_SHARE of its total."""
    total = named.sum(dtype=np.int64)
    return total > 0 and all(np.maximum(o.astype(np.int64) - named, 0).sum() < EXCESS_SHARE * total for o in others)


def _one_channel(image: np.ndarray, filt: str | None, label: str) -> np.ndarray:
    """The filter's channel of a colour file, by the rule in the module docstring."""
    if image.shape[-1] == 4:
        alpha = image[..., 3]
        if alpha.min() != alpha.max():
            raise ImageError(f"{label}: has a varying alpha channel; expected one filter per file")
        image = image[..., :3]
    if image.shape[-1] == 1:
        return image[..., 0]
    if image.shape[-1] != 3:
        raise ImageError(f"{label}: {image.shape[-1]} channels, expected grey or RGB")
    r, g, b = (image[..., k] for k in range(3))
    if np.array_equal(r, g) and np.array_equal(g, b):
        return r
    if filt in RGB_CHANNEL:
        named = image[..., RGB_CHANNEL[filt]]
        others = [image[..., j] for j in range(3) if j != RGB_CHANNEL[filt]]
        if _mostly_below(others, named):
            return named.copy()
    elif filt == "yellow":
        mean_rg = ((r.astype(np.int64) + g + 1) // 2)
        total = mean_rg.sum()
        if _mostly_below([b], mean_rg) and np.abs(r.astype(np.int64) - g).sum() < EXCESS_SHARE * total:
            return mean_rg.astype(image.dtype)
    raise ImageError(f"{label}: RGB image whose {filt or 'filter'} channel cannot be told (channels are not equal, "
                     f"and not only the {filt or 'named'} colour); save one grey channel per file")


def read_tiff(source: bytes | str | Path, name: str | None = None) -> np.ndarray:
    """Decode one single-channel HPA TIFF from bytes or a path into a 2-D uint8/uint16 array."""
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "<bytes>")
    try:
        handle = MemoryFile(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        with tifffile.TiffFile(handle) as tif:
            if len(tif.pages) != 1:
                raise ImageError(f"{label}: {len(tif.pages)} pages, expected one single-channel image")
            page = tif.pages[0]
            _check_declared_size(page.shape, label)
            _check_not_truncated(page, tif.filehandle.size, label)
            image = _uncompressed_view(page, source, tif.byteorder)
            if image is None:
                image = page.asarray(maxworkers=1)  # parallelism comes from the scheduler's tasks
    except ImageError:
        raise
    except Exception as exc:  # tifffile/imagecodecs raise many types for corrupt data
        raise ImageError(f"{label}: unreadable TIFF ({type(exc).__name__}: {exc})") from None
    image = np.squeeze(image)
    if image.ndim != 2:
        raise ImageError(f"{label}: shape {image.shape}, expected a single-channel 2-D image")
    if image.dtype not in SUPPORTED_DTYPES:
        raise ImageError(f"{label}: sample type {image.dtype}, expected uint8 or uint16")
    return image


class MemoryFile(io.RawIOBase):
    """A read-only, seekable file over bytes already in memory, without copying them.

    Why: ``io.BytesIO`` copies anything that is not ``bytes``, and archive members arrive as
    ``bytearray`` (filled in place by the decoder). For a 3072² channel that copy, with the
    page faults of its fresh memory, is a large part of the TIFF's reading.
    """

    def __init__(self, data: bytes | bytearray | memoryview):
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        part = self._view[self._position:self._position + len(target)]  # empty past the end
        target[:len(part)] = part
        self._position += len(part)
        return len(part)


def _uncompressed_view(page, source, byteorder: str) -> np.ndarray | None:
    """An uncompressed TIFF (as in the Kaggle archives) already in memory, as an array over the
    same bytes: no copy (tifffile would copy it out, ~10 % of a sample's work). None for
    anything else: compressed, on disk, bit-reversed, a predictor, strips not back to back."""
    if not isinstance(source, (bytes, bytearray, memoryview)) or not page.is_contiguous:
        return None
    if page.fillorder != 1 or page.predictor not in (None, 1) or sum(page.databytecounts) < page.nbytes:
        return None
    image = np.frombuffer(source, page.dtype.newbyteorder(byteorder), count=page.size, offset=page.dataoffsets[0])
    image = image.reshape(page.shape)
    return image if image.dtype.isnative else image.astype(image.dtype.newbyteorder("="))


def _check_not_truncated(page, file_size: int, label: str) -> None:
    """tifffile fills strips or tiles that lie past the end of the file with zeros, silently;
    a truncated download or archive member must be an error instead."""
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
    if not ends or any(c == 0 for c in page.databytecounts) or max(ends) > file_size:
        raise ImageError(f"{label}: truncated TIFF (image data reaches byte {max(ends, default=0)}, "
                         f"file has {file_size})")


@dataclass
class SampleLevels:
    """A sample's levels, ``{size: (4, size, size) array}``, and what its source was."""

    levels: dict[int, np.ndarray]
    source_shape: tuple[int, int]
    source_bits: int


def check_channels(channels: dict[str, np.ndarray], sample_id: str) -> tuple[tuple[int, int], int]:
    """The four filters are present, square and agree in shape and dtype; returns (shape, bits)."""
    missing = [f for f in FILTERS if f not in channels]
    if missing:
        raise ImageError(f"{sample_id}: missing channel(s) {', '.join(missing)}")
    shapes = {f: channels[f].shape for f in FILTERS}
    if len(set(shapes.values())) != 1:
        raise ImageError(f"{sample_id}: channels differ in shape: " +
                         ", ".join(f"{f} {s[0]}x{s[1]}" for f, s in shapes.items()))
    dtypes = {channels[f].dtype for f in FILTERS}
    if len(dtypes) != 1:
        raise ImageError(f"{sample_id}: channels differ in sample type: {sorted(str(d) for d in dtypes)}")
    shape = shapes[FILTERS[0]]
    if shape[0] != shape[1]:
        raise ImageError(f"{sample_id}: image is {shape[0]}x{shape[1]}, expected a square image")
    return shape, 8 * channels[FILTERS[0]].itemsize


def area_resize(image: np.ndarray, size: int, upscale: bool = False) -> np.ndarray:
    """Area-average ``image`` to ``size``×``size``, keeping its dtype (rounded half up).

    OpenCV's ``INTER_AREA`` on integers is the exact rounded block mean for integer factors
    and area-weighted otherwise, and about 5x faster than going through float32. A source
    smaller than ``size`` is an error unless ``upscale`` (then bilinear interpolation: no
    detail is added, and the cells appear larger than in full-size sources at that level).
    """
    if image.shape == (size, size):
        return image
    if size > min(image.shape):
        if not upscale:
            raise ImageError(f"source is {image.shape[0]}x{image.shape[1]}, smaller than --size {size} "
                             f"(use a smaller --size, or --upscale)")
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _working_precision(image: np.ndarray) -> np.ndarray:
    """The source in the precision the levels are averaged in.

    8-bit sources become uint16 with 8 fractional bits (``v << 8``, exact), so that OpenCV's
    fast integer ``INTER_AREA`` keeps 1/256 of a grey level through every halving; 16-bit
    sources go to float32. Rounding to the store's dtype happens once per level, from this.
    """
    if image.dtype == np.uint8:
        work = np.empty(image.shape, np.uint16)
        return np.left_shift(image, 8, out=work, dtype=np.uint16)  # one pass, no temporary
    return image.astype(np.float32)


#: integer factors summed by :func:`_block_mean` (``cv2.transform`` takes up to 4 channels)
BLOCK_FACTORS = (3, 4)


def _first_level(image: np.ndarray, size: int, upscale: bool) -> np.ndarray:
    """The largest level, in working precision, from a square source."""
    factor, rest = divmod(image.shape[0], size)
    if rest == 0 and factor in BLOCK_FACTORS:
        return _block_mean(image, factor)
    return area_resize(_working_precision(image), size, upscale)


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
    """The ``k``×``k`` block means of a square ``image`` in working precision (see
    :func:`_working_precision`): what OpenCV's ``INTER_AREA`` gives from the widened source.

    Why: OpenCV has a vectorised path only for 2×2 blocks. For 3×3 (3072→1024) it takes half
    the time to add each block's ``k`` rows (NumPy, over whole rows), then read the row sums as
    a ``k``-channel image and let ``cv2.transform`` add and scale the channels. 8-bit: the sums
    are exact integers and the ``256 / k²`` scaling is rounded once (``k`` of 3 or 4 never
    makes a tie), so the values are OpenCV's exactly; 16-bit: exact float32 sums, equal to
    OpenCV's within float32 rounding.
    """
    size = image.shape[0] // k
    wide, scale = (np.uint16, 256 / (k * k)) if image.dtype == np.uint8 else (np.float32, 1 / (k * k))
    rows = np.add(image[0::k], image[1::k], dtype=wide)  # widened as it adds: no cast pass
    for i in range(2, k):
        rows += image[i::k]
    return cv2.transform(rows.reshape(size, size, k), np.full((1, k), scale))


def _to_store(level: np.ndarray, out: np.ndarray) -> None:
    """Round a working-precision level into ``out``, a channel of the store's dtype (uint16
    sources to uint8: v / 257); written in place, so no stacking copy follows."""
    if level.dtype == np.uint16:  # an 8-bit source with 8 fractional bits (v <= 255 << 8: no overflow)
        np.right_shift(level + np.uint16(128), 8, out=out, casting="unsafe")
        return
    if out.dtype == np.uint8:
        level = level / UINT16_TO_UINT8
    np.clip(np.rint(level), 0, np.iinfo(out.dtype).max, out=out, casting="unsafe")


def make_levels(channels: dict[str, np.ndarray], size: int, levels: int, dtype="uint8",
                sample_id: str = "sample", upscale: bool = False) -> SampleLevels:
    """All resolution levels of one sample, channels in ``FILTERS`` order.

    Each level is the area average of the source, computed by halving the level above in
    working precision and rounded once, so every stored level is within one grey level of
    the exact float area average and of the 2×2 mean of the stored level above.
    """
    dtype = np.dtype(dtype)
    shape, bits = check_channels(channels, sample_id)
    sizes = level_sizes(size, levels)
    try:
        work = [_first_level(channels[f], size, upscale) for f in FILTERS]
    except ImageError as exc:
        raise ImageError(f"{sample_id}: {exc}") from None
    out = {}
    for k, s in enumerate(sizes):
        if k:
            work = [area_resize(channel, s) for channel in work]
        out[s] = np.empty((len(FILTERS), s, s), dtype)
        for c, channel in enumerate(work):
            _to_store(channel, out[s][c])
    return SampleLevels(out, shape, bits)


def channel_sums(levels: dict[int, np.ndarray]) -> np.ndarray:
    """``(L, 4, 2)`` per-level, per-channel sum and sum of squares, for the store's statistics
    (``channel_sums`` of the store contract), levels largest first; exact integers.

    8-bit levels: OpenCV's ``sumElems`` and squared L2 norm, one vectorised pass each (far
    quicker than a histogram); the norm is accumulated in floating point, off by far
    less than 0.5 below 2**53 / 255² pixels, so rounding makes it exact. 16-bit levels, whose
    squares could pass 2**53: from each channel's histogram.
    """
    out = np.zeros((len(levels), 4, 2))
    for k, size in enumerate(sorted(levels, reverse=True)):
        for c, channel in enumerate(levels[size]):
            if channel.dtype == np.uint8:
                out[k, c] = cv2.sumElems(channel)[0], np.rint(cv2.norm(channel, cv2.NORM_L2SQR))
                continue
            counts = _histogram(channel)
            values = np.arange(counts.size, dtype=np.float64)
            weighted = counts * values
            # sums of products, not ``counts @ values``: a BLAS call wakes OpenBLAS's thread pool,
            # whose spinning threads take CPU from the decoder
            out[k, c] = weighted.sum(), (weighted * values).sum()
    return out


def _histogram(channel: np.ndarray) -> np.ndarray:
    """The 65,536-bin histogram of a 16-bit channel (OpenCV's limit: fewer than 2**24 pixels)."""
    if channel.size < 2**24:
        return cv2.calcHist([np.ascontiguousarray(channel)], [0], None, [65536], [0, 65536]).ravel().astype(np.float64)
    return np.bincount(channel.ravel(), minlength=65536).astype(np.float64)

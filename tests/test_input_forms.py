"""Every form of HPA data: the competition's 512² PNGs (folder or zip), JPEGs, colour
files holding one filter, 16-bit PNGs, and zip archives with bad members."""
import io
import json
import shutil
import zipfile

import imagecodecs
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.labels import FILTERS
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.prep.extract import extract_archives
from hpa_pipeline.prep.imaging import ImageError, read_image
from hpa_pipeline.prep.ingest import ingest

from .conftest import REAL_PNG_DIR as REAL_PNG  # noqa: E402 - the reference data's one location


def area_mean(image: np.ndarray, size: int) -> np.ndarray:
    """Independent area average by block means (integer factors)."""
    k = image.shape[0] // size
    return image.reshape(size, k, size, k).astype(np.float64).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def real_png_samples(tmp_path_factory):
    """The 200 real PNGs grouped four at a time into pseudo-samples named <id>_<filter>.png."""
    if not REAL_PNG.is_dir():
        pytest.skip("../shared/data/hpa-real-png is not here")
    files = sorted(REAL_PNG.glob("*.png"))
    tmp = tmp_path_factory.mktemp("realpng")
    folder = tmp / "png"
    folder.mkdir()
    ids = []
    for k in range(len(files) // 4):
        sample_id = f"pseudo{k:03d}"
        ids.append(sample_id)
        for filt, source in zip(FILTERS, files[4 * k:4 * k + 4]):
            shutil.copy(source, folder / f"{sample_id}_{filt}.png")
    csv = tmp / "train.csv"
    csv.write_text("Id,Target\n" + "".join(f"{i},{k % 28}\n" for k, i in enumerate(ids)))
    archive = tmp / "train.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for path in sorted(folder.iterdir()):
            z.write(path, f"train/{path.name}")
    return folder, csv, archive, ids


def test_real_pngs_build_a_store_whose_levels_are_their_area_averages(real_png_samples, tmp_path):
    folder, csv, _, ids = real_png_samples
    report = build_zarr(folder, csv, tmp_path / "png.zarr", StoreSpec(size=512, levels=3, chunk=128), workers=2)
    assert report.exit_code == 0 and report.written == len(ids) == 50
    root = zarr.open_group(str(tmp_path / "png.zarr"), mode="r")
    for index in (0, 17, 49):
        for c, filt in enumerate(FILTERS):
            source = imagecodecs.png_decode((folder / f"{ids[index]}_{filt}.png").read_bytes())
            for size in (512, 256, 128):
                stored = root[f"images/{size}"][index, c].astype(np.float64)
                assert np.abs(stored - area_mean(source, size)).max() <= 1.0, (ids[index], filt, size)
    assert root["source_shape"][0].tolist() == [512, 512]


@pytest.mark.integration
def test_a_zip_of_real_pngs_ingests_to_the_same_store(real_png_samples, tmp_path):
    folder, csv, archive, ids = real_png_samples
    spec = StoreSpec(size=256, levels=2, chunk=128)
    a = ingest(archive, csv, tmp_path / "zip.zarr", spec, workers=2)
    b = build_zarr(folder, csv, tmp_path / "png.zarr", spec, workers=2)
    assert a.exit_code == b.exit_code == 0 and a.written == len(ids)
    za, zb = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("zip.zarr", "png.zarr"))
    for size in (256, 128):
        np.testing.assert_array_equal(za[f"images/{size}"][:], zb[f"images/{size}"][:])


@pytest.mark.integration  # over a second: the fast tier has a minute
def test_sources_smaller_than_size_fail_by_id_unless_upscaled(real_png_samples, tmp_path):
    folder, csv, _, ids = real_png_samples
    report = build_zarr(folder, csv, tmp_path / "big.zarr", StoreSpec(size=1024, levels=1), workers=2)
    assert report.exit_code == 3 and len(report.failed) == len(ids)
    assert "smaller than --size 1024" in report.failed[0]["reason"] and ids[0] in report.failed[0]["reason"]
    report = build_zarr(folder, csv, tmp_path / "up.zarr", StoreSpec(size=1024, levels=2), workers=2, upscale=True)
    assert report.exit_code == 0


def grey(seed=0, size=64, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (size, size), dtype=dtype)


def test_png_jpeg_and_16_bit_png_are_read():
    image = grey()
    assert np.array_equal(read_image(imagecodecs.png_encode(image), "x_red.png"), image)
    deep = grey(1, dtype=np.uint16)
    assert np.array_equal(read_image(imagecodecs.png_encode(deep), "x_red.png"), deep)
    smooth = np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))
    decoded = read_image(imagecodecs.jpeg8_encode(smooth, level=95), "x_red.JPG")
    assert decoded.shape == (64, 64) and np.abs(decoded.astype(int) - smooth).mean() < 3


def test_the_colour_file_rule():
    image = grey(2)
    empty = np.zeros_like(image)
    equal = np.stack([image] * 3, -1)
    assert np.array_equal(read_image(imagecodecs.png_encode(equal), "a_blue.png", "blue"), image)
    green = np.stack([empty, image, empty], -1)
    assert np.array_equal(read_image(imagecodecs.png_encode(green), "a_green.png", "green"), image)
    yellow = np.stack([image, image, empty], -1)
    assert np.array_equal(read_image(imagecodecs.png_encode(yellow), "a_yellow.png", "yellow"), image)
    with pytest.raises(ImageError, match="a_red.png: RGB image whose red channel cannot be told"):
        read_image(imagecodecs.png_encode(green), "a_red.png", "red")
    with pytest.raises(ImageError, match="cannot be told"):
        read_image(imagecodecs.png_encode(np.stack([image, grey(3), grey(4)], -1)), "a_yellow.png", "yellow")


@pytest.mark.parametrize("filt, colour", [("red", (1, 0, 0)), ("green", (0, 1, 0)), ("blue", (0, 0, 1)),
                                          ("yellow", (1, 1, 0))])
def test_a_sparse_filter_saved_as_colour_jpeg_is_read_despite_chroma_leakage(filt, colour):
    """Isolated bright pixels in a pure colour leak up to 60 % into the other channels through
    JPEG's chroma subsampling (what failed make demo from a clean clone with 15 %-empty)."""
    rng = np.random.default_rng(0)
    image = np.zeros((128, 128), np.uint8)
    image[rng.integers(0, 128, 300), rng.integers(0, 128, 300)] = 200
    data = imagecodecs.jpeg8_encode(np.stack([image * c for c in colour], -1).astype(np.uint8), level=95)
    decoded = read_image(data, f"x_{filt}.jpg", filt)
    rgb = imagecodecs.jpeg8_decode(data).astype(np.int64)
    expected = (rgb[..., 0] + rgb[..., 1] + 1) // 2 if filt == "yellow" else rgb[..., colour.index(1)]
    assert np.array_equal(decoded, expected)  # the filter's own colour, as JPEG decoded it


def test_a_zip_with_bad_members_fails_them_by_name_and_goes_on(tmp_path):
    ids = [f"s{k}" for k in range(4)]
    csv = tmp_path / "train.csv"
    csv.write_text("Id,Target\n" + "".join(f"{i},0\n" for i in ids))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for k, sample_id in enumerate(ids):
            for filt in FILTERS:
                if sample_id == "s2" and filt == "yellow":
                    continue  # a missing channel
                z.writestr(f"{sample_id}_{filt}.png", imagecodecs.png_encode(grey(k, 128)))
        z.writestr("../evil_red.png", b"x")
        z.writestr("extra_red.png", imagecodecs.png_encode(grey(9, 128)))  # an id not in the CSV
    data = bytearray(buffer.getvalue())
    # damage s1_green's compressed bytes (its CRC will not match)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("s1_green.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    data[start:start + 8] = b"\x00" * 8
    archive = tmp_path / "train.zip"
    archive.write_bytes(bytes(data))
    out = tmp_path / "z.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(csv), "--out", str(out), "--size", "128",
                                      "--levels", "1", "--chunk", "64", "--workers", "1"])
    assert result.exit_code == 3, result.output
    report = json.loads((out / "report.json").read_text())
    reasons = {f["id"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"s1", "s2"}
    assert "s1_green.png" in reasons["s1"] and "yellow" in reasons["s2"]
    assert report["not_in_csv"] == ["extra"] and any("evil" in r for r in report["refused"])
    assert report["written"] == 2
    # extract unpacks the good members safely, and refuses the unsafe one by name
    extracted = extract_archives([archive], tmp_path / "x")
    assert (tmp_path / "x" / "s0_red.png").exists() and not (tmp_path / "evil_red.png").exists()
    assert any("s1_green.png" in f for f in extracted.failed)


@pytest.mark.integration  # over a second: the fast tier has a minute
def test_synth_writes_the_png_zip_that_ingest_reads(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "d"), "--form", "png-zip", "--n-train", "6",
                                      "--n-test", "2", "--image-sizes", "1024", "--workers", "1"])
    assert result.exit_code == 0, result.output
    d = tmp_path / "d"
    with zipfile.ZipFile(d / "train.zip") as z:
        names = z.namelist()
        assert len(names) == 24 and all(n.endswith(".png") for n in names)
        assert imagecodecs.png_decode(z.read(names[0])).shape == (512, 512)
    for split, csv in (("train", "train.csv"), ("test", "sample_submission.csv")):
        result = CliRunner().invoke(cli, ["ingest", str(d / f"{split}.zip"), "--csv", str(d / csv),
                                          "--out", str(tmp_path / f"{split}.zarr"), "--size", "512", "--levels", "2"])
        assert result.exit_code == 0, result.output


def test_synth_writes_an_hpa_v18_jpeg_folder_that_build_zarr_reads(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "d"), "--form", "jpeg-folder", "--n-train", "4",
                                      "--image-sizes", "256", "--workers", "1"])
    assert result.exit_code == 0 and "wrote 4 train and 0 test samples" in result.output, result.output
    folder = tmp_path / "d" / "hpa_v18"
    jpeg = imagecodecs.jpeg8_decode((folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes())
    assert jpeg.ndim == 3  # each filter in its display colour, as the HPA downloads
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(folder), "--csv",
                                      str(tmp_path / "d" / "HPAv18RBGY_wodpl.csv"), "--out", str(tmp_path / "v18.zarr"),
                                      "--size", "256", "--levels", "2", "--chunk", "128", "--workers", "1"])
    assert result.exit_code == 0, result.output

"""``vislab.io.images``: the one image reader (EXIF orientation, 16-bit and float scaling, palette/alpha/gray
conversions, decompression bombs, one-line errors)."""

import numpy as np
import pytest
from PIL import Image

from vislab.errors import UserError
from vislab.io import ImageReadError, check_image, image_size, open_image, read_image


def _gradient(h: int = 24, w: int = 40) -> np.ndarray:
    """uint8 [H, W] with every value different along a row."""
    return (np.add.outer(np.arange(h) * 3, np.arange(w) * 5) % 256).astype(np.uint8)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    g = _gradient()
    Image.fromarray(g).save(tmp_path / "g8.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the same picture in 16 bits
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    a8 = read_image(tmp_path / "g8.png", "gray", np.float64)
    a16 = read_image(tmp_path / "g16.png", "gray", np.float64)
    np.testing.assert_allclose(a16, a8, atol=1e-12)
    assert (a16 < 1).mean() > 0.9  # Pillow's convert("L") clips it: almost every pixel white
    assert np.array_equal(read_image(tmp_path / "g16.png", "rgb", np.uint8), np.repeat(g[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(open_image(tmp_path / "g16.png", "gray")), g)


def test_int32_and_float_tiff(tmp_path):
    g = _gradient().astype(np.int32) * 257
    Image.fromarray(g, "I").save(tmp_path / "i.tif")
    np.testing.assert_allclose(read_image(tmp_path / "i.tif", "gray", np.float64), g / 65535)
    f = np.linspace(-3.0, 5.0, 24 * 40, dtype=np.float32).reshape(24, 40)  # outside [0, 1]: min-max
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif", "gray")
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out, (f + 3) / 8, atol=1e-6)
    unit = (f + 3) / 16  # already in [0, 1]: kept as it is
    Image.fromarray(unit, "F").save(tmp_path / "u.tif")
    np.testing.assert_allclose(read_image(tmp_path / "u.tif", "gray"), unit, atol=1e-7)
    bad = unit.copy()
    bad[3, 4] = np.nan
    Image.fromarray(bad, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"nan.tif has 1 NaN or infinite pixel"):
        read_image(tmp_path / "nan.tif")


def test_exif_orientation_reads_a_portrait_photo_as_portrait(tmp_path):
    stored = np.zeros((30, 50, 3), np.uint8)  # stored landscape: 50 wide, 30 high, a red mark top-left
    stored[:5, :5] = (255, 0, 0)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "portrait.jpg", "rgb", np.uint8)
    assert arr.shape == (50, 30, 3)  # portrait
    assert image_size(tmp_path / "portrait.jpg") == (30, 50)
    assert arr[:5, -5:, 0].mean() > 200 and arr[:5, :5, 0].mean() < 60  # the mark went to the top-right
    assert open_image(tmp_path / "portrait.jpg").size == (30, 50)


def test_palette_alpha_and_gray_conversions(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (200, 100, 50)
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, 6:] = 0  # transparent, with a colour hidden under it
    rgb[:, 6:] = (0, 255, 0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png", "rgb", np.uint8)
    assert np.array_equal(out[:, :4], rgb[:, :4]) and (out[:, 6:] == 0).all()  # composited on black
    half = alpha.copy()
    half[:] = 128
    Image.fromarray(np.dstack([rgb[..., 0], half]), "LA").save(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png", "gray", np.uint8)
    assert la[0, 0] == round(200 * 128 / 255)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png", "rgb", np.uint8), rgb)
    gray = read_image(tmp_path / "pal.png", "gray", np.uint8)  # ITU-R 601-2 luma, as Pillow's "L"
    assert gray[0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(read_image(tmp_path / "l.png", "rgb", np.uint8), np.repeat(rgb[..., :1], 3, axis=2))
    bits = Image.fromarray(rgb[..., 0] > 0).convert("1")
    bits.save(tmp_path / "one.png")
    assert set(np.unique(read_image(tmp_path / "one.png", "gray"))) == {0.0, 1.0}


def test_decompression_bomb_is_refused_with_one_line(tmp_path, monkeypatch):
    Image.fromarray(_gradient(100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10 000 pixels: Pillow's warning level (< 2×)
    for fn in (read_image, open_image, image_size):
        with pytest.raises(ImageReadError, match=r"big.png is refused as a possible decompression bomb .*10,000 "
                                                 r"pixels, over the limit of 6,000") as err:
            fn(tmp_path / "big.png")
        assert "\n" not in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # Pillow's error level
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(tmp_path / "big.png")
    assert "decompression bomb" in check_image(tmp_path / "big.png")


def test_errors_name_the_file_and_are_user_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "folder.png").mkdir()
    cases = [(tmp_path / "missing.png", "missing.png does not exist"),
             (tmp_path / "folder.png", "folder.png is a folder, not an image file"),
             (tmp_path / "broken.png", "cannot read image .*broken.png")]
    for path, match in cases:
        with pytest.raises(ImageReadError, match=match) as err:
            read_image(path)
        assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    Image.fromarray(_gradient()).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="mode must be one of rgb, gray"):
        read_image(tmp_path / "ok.png", "bgr")
    with pytest.raises(TypeError, match="dtype"):
        read_image(tmp_path / "ok.png", "rgb", np.int16)
    assert check_image(tmp_path / "ok.png") is None and "cannot read" in check_image(tmp_path / "broken.png")


def test_open_raw_keeps_label_values_and_orients(tmp_path):
    from vislab.io import open_raw

    labels = np.zeros((10, 30), np.uint8)
    labels[:, :5] = 3  # class 3 on the left as stored
    im = Image.fromarray(labels, "L").convert("P")
    exif = im.getexif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display: the left band goes to the bottom
    im.save(tmp_path / "mask.png", exif=exif)
    raw = open_raw(tmp_path / "mask.png")
    assert raw.mode == "P" and raw.size == (10, 30)
    arr = np.asarray(raw)
    assert set(np.unique(arr)) == {0, 3} and (arr[-5:] == 3).all() and (arr[:-5] == 0).all()
    with pytest.raises(ImageReadError, match="does not exist"):
        open_raw(tmp_path / "none.png")

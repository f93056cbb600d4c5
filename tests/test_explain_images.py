"""The image-folder explanation pipeline: decoding, preprocessing, and a run end to end."""

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import configs
from fmi_jax import plotting, studies
from fmi_jax.data import images as images_lib
from fmi_jax.data.errors import DataError

MEAN = np.asarray(images_lib.IMAGENET_MEAN, np.float32)
STD = np.asarray(images_lib.IMAGENET_STD, np.float32)
# The tiny model of configs/explain_images.py:smoke.
MODEL = {"name": "mobilenet_v3_small", "width_mult": 0.25, "num_classes": 10}
# A registry CNN that compiles in a second, for the two IG runs compared below.
TINY_CNN = {
    "name": "simple_cnn",
    "features": (4, 8),
    "pool": (True, True),
    "dense": (16,),
    "num_classes": 10,
}
GOOD = ("rgb.png", "gray.jpg", "rgba.png", "palette.png", "wide.bmp", "sub/nested.png")
BAD = ("notes.jpg", "truncated.png")


def _config(model=MODEL, **ig):
    config = configs.load("explain_images", "smoke")
    config.model = model
    config.summary.per_page = 4  # 6 images: two summary pages
    config.ig.update(ig)
    return config


def _gradient(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(_gradient(80, 100, 0)).save(root / "rgb.png")
    Image.fromarray(_gradient(90, 70, 1)[..., 0]).save(root / "gray.jpg")  # mode 'L'
    rgba = np.concatenate([_gradient(64, 64, 2), np.full((64, 64, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(_gradient(75, 75, 3)).convert("P").save(root / "palette.png")
    Image.fromarray(_gradient(40, 160, 4)).save(root / "wide.bmp")
    (root / "sub").mkdir()
    Image.fromarray(_gradient(100, 80, 5)).save(root / "sub" / "nested.png")
    (root / "notes.jpg").write_text("not an image\n")
    Image.fromarray(_gradient(64, 64, 6)).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "full.png").unlink()
    (root / ".hidden.png").write_text("ignored: hidden")
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("out")
    config = _config()
    return config, workdir, studies.run_explain_images(config, folder, workdir)


def test_constant_colour_normalises_to_known_values():
    colour = np.array([200, 17, 90], np.uint8)
    image = np.broadcast_to(colour, (50, 80, 3)).copy()
    out = images_lib.preprocess(image, resize=40, crop=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    expected = (colour.astype(np.float32) / np.float32(255) - MEAN) / STD
    np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(_gradient(30, 50, 0)[..., 1], "L")
    pixels = images_lib.resize_and_crop(gray, resize=24, crop=20)
    assert pixels.shape == (20, 20, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_alpha_is_composited_over_white_or_dropped():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red under the alpha
    rgba[:2, ..., 3] = 0  # top half fully transparent
    rgba[2:, ..., 3] = 255  # bottom half opaque
    image = Image.fromarray(rgba, "RGBA")
    white = np.asarray(images_lib.to_rgb(image))
    np.testing.assert_array_equal(white[:2], 255)
    np.testing.assert_array_equal(white[2:], np.broadcast_to([200, 0, 0], (2, 4, 3)))
    dropped = np.asarray(images_lib.to_rgb(image, alpha="drop"))
    np.testing.assert_array_equal(dropped, np.broadcast_to([200, 0, 0], (4, 4, 3)))
    half = rgba.copy()
    half[..., 3] = 128
    composite = np.asarray(images_lib.to_rgb(Image.fromarray(half, "RGBA")))[0, 0]
    np.testing.assert_allclose(composite, [228, 127, 127], atol=1)


def test_resize_then_center_crop_shapes_and_offsets():
    wide = np.zeros((50, 200, 3), np.uint8)
    wide[:, 100:] = 255  # right half white: the crop is centred on the edge
    pixels = images_lib.resize_and_crop(wide, resize=20, crop=16)
    assert pixels.shape == (16, 16, 3)
    assert pixels[:, 0].max() == 0 and pixels[:, -1].min() == 255
    tall = Image.fromarray(np.zeros((300, 120, 3), np.uint8))
    assert images_lib.resize_and_crop(tall, resize=72, crop=64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="crop <= resize"):
        images_lib.resize_and_crop(tall, resize=60, crop=64)


def test_empty_folder_and_unmatched_glob_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        images_lib.list_image_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        images_lib.list_image_files(str(tmp_path / "nothing_here*.png"))
    with pytest.raises(FileNotFoundError, match="missing"):
        studies.run_explain_images(_config(), tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_is_recursive_and_skips_bad_files(folder):
    loaded = images_lib.load_image_folder(folder, resize=72, crop=64)
    relative = sorted(f.relative_to(folder).as_posix() for f in loaded.files)
    assert relative == sorted(GOOD)
    assert sorted(f.name for f, _ in loaded.skipped) == sorted(BAD)
    assert loaded.images.shape == (len(GOOD), 64, 64, 3)
    assert loaded.pixels.dtype == np.uint8
    globbed = images_lib.list_image_files(str(folder / "*.png"))
    assert sorted(f.name for f in globbed) == [
        "palette.png",
        "rgb.png",
        "rgba.png",
        "truncated.png",
    ]


def test_an_rgb_image_with_a_transparent_colour_is_composited(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[:2] = (10, 0, 0)  # the colour marked transparent
    pixels[2:] = (0, 200, 0)
    Image.fromarray(pixels).save(tmp_path / "trns.png", transparency=(10, 0, 0))
    rgb = np.asarray(images_lib.decode(tmp_path / "trns.png"))
    np.testing.assert_array_equal(rgb[:2], 255)
    np.testing.assert_array_equal(rgb[2:], np.broadcast_to([0, 200, 0], (2, 4, 3)))
    kept = np.asarray(images_lib.decode(tmp_path / "trns.png", alpha="drop"))
    np.testing.assert_array_equal(kept, pixels)


def _write_rgb16_png(path, left, right, transparent):
    """A 4 x 6 16-bit RGB PNG, its left half one colour and its right half another, with
    ``transparent`` as its tRNS colour (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    pixels = np.zeros((4, 6, 3), np.uint16)
    pixels[:, :3], pixels[:, 3:] = left, right
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 4, 16, 2, 0, 0, 0))
        + chunk(b"tRNS", struct.pack(">HHH", *transparent))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_a_16_bit_rgb_png_with_a_transparent_colour_is_composited(tmp_path):
    """Pillow opens a 16-bit RGB PNG as 8-bit RGB but keeps its tRNS colour in 16 bits;
    the colour still marks its pixels transparent."""
    clear = (0x1000, 0x2000, 0x3000)
    _write_rgb16_png(tmp_path / "rgb16.png", clear, (0xFFFF, 0x0000, 0x8000), clear)
    rgb = np.asarray(images_lib.decode(tmp_path / "rgb16.png"))
    np.testing.assert_array_equal(rgb[:, :3], 255)
    np.testing.assert_array_equal(rgb[:, 3:], np.broadcast_to([255, 0, 128], (4, 3, 3)))
    kept = np.asarray(images_lib.decode(tmp_path / "rgb16.png", alpha="drop"))
    np.testing.assert_array_equal(kept[:, :3], np.broadcast_to([16, 32, 48], (4, 3, 3)))
    # A transparent colour whose 16-bit values are all <= 255 (near-black) marks the
    # near-black pixels, not the pure blue that Pillow's 8 bits would make (0, 0, 255).
    dark = (0, 0, 0x00FF)
    _write_rgb16_png(tmp_path / "dark.png", dark, (0, 0, 0xFFFF), dark)
    rgb = np.asarray(images_lib.decode(tmp_path / "dark.png"))
    np.testing.assert_array_equal(rgb[:, :3], 255)
    np.testing.assert_array_equal(rgb[:, 3:], np.broadcast_to([0, 0, 255], (4, 3, 3)))


def test_32_bit_images_are_skipped_with_the_reason_not_clipped(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "float.tif")  # convert('RGB') makes it black
    Image.fromarray((ramp * 1e6).astype(np.int32)).save(tmp_path / "int.tif")
    # 32-bit integers holding 0..255 are not 16-bit data (their top 8 bits are 0).
    Image.fromarray((ramp * 255).astype(np.int32)).save(tmp_path / "int_small.tif")
    loaded = images_lib.load_images(sorted(tmp_path.iterdir()), resize=8, crop=8)
    assert loaded.files == []
    assert [(f.name, "8 or 16 bits" in reason) for f, reason in loaded.skipped] == [
        ("float.tif", True),
        ("int.tif", True),
        ("int_small.tif", True),
    ]
    # 16-bit data that Pillow opens as 32-bit integers keeps its top 8 bits, as 'I;16'.
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    (tmp_path / "deep.pgm").write_bytes(b"P5 8 8 65535\n" + deep.astype(">u2").tobytes())
    assert Image.open(tmp_path / "deep.pgm").mode == "I"
    top = np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(np.asarray(images_lib.decode(tmp_path / "deep.pgm")), top)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # opens as 'I;16'
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    np.testing.assert_array_equal(np.asarray(images_lib.decode(tmp_path / "deep.png")), top)
    # A 16-bit grey marked transparent is white, as in an 8-bit image; 'drop' keeps it.
    Image.fromarray(deep).save(tmp_path / "clear.png", transparency=int(deep[0, 3]))
    white = top.copy()
    white[0, 3] = 255
    np.testing.assert_array_equal(np.asarray(images_lib.decode(tmp_path / "clear.png")), white)
    dropped = images_lib.decode(tmp_path / "clear.png", alpha="drop")
    np.testing.assert_array_equal(np.asarray(dropped), top)


def test_a_16_bit_png_opened_as_32_bit_integers_keeps_its_top_8_bits(tmp_path, monkeypatch):
    # Pillow before 10.3 opened 16-bit grey PNGs as mode 'I'; a PNG has at most 16 bits.
    from PIL import PngImagePlugin

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    assert Image.open(tmp_path / "deep.png").mode == "I"
    top = np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(np.asarray(images_lib.decode(tmp_path / "deep.png")), top)


_HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"


def test_heic_photos_say_how_to_read_them_and_use_pillow_heif_when_installed(tmp_path, monkeypatch):
    (tmp_path / "photo.HEIC").write_bytes(_HEIC)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    [(_, reason)] = images_lib.load_images([tmp_path / "photo.HEIC"]).skipped
    assert "pip install pillow-heif" in reason

    # Installed: the plugin registers an opener on the first HEIF file, then it decodes.
    monkeypatch.setattr(Image, "ID", list(Image.ID))
    monkeypatch.setattr(Image, "OPEN", dict(Image.OPEN))
    plugin = types.ModuleType("pillow_heif")
    plugin.register_heif_opener = lambda: Image.register_open(
        "FAKE_HEIF",
        lambda fp, filename: Image.new("RGB", (2, 2), (1, 2, 3)),
        lambda head: head[4:12] == b"ftypheic",
    )
    monkeypatch.setitem(sys.modules, "pillow_heif", plugin)
    rgb = np.asarray(images_lib.decode(tmp_path / "photo.HEIC"))
    np.testing.assert_array_equal(rgb, np.broadcast_to([1, 2, 3], (2, 2, 3)))
    # A file that is not HEIF is not retried through the plugin.
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UnidentifiedImageError, match="cannot identify"):
        images_lib.decode(tmp_path / "notes.txt")


def test_folders_named_like_globs_and_linked_folders_are_listed(tmp_path):
    trip = tmp_path / "photos" / "trip [2023]"
    trip.mkdir(parents=True)
    Image.fromarray(_gradient(8, 8, 0)).save(trip / "a.png")
    assert images_lib.list_image_files(trip) == [trip / "a.png"]
    assert images_lib.list_image_files(str(trip / "a.png")) == [trip / "a.png"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(_gradient(8, 8, 1)).save(elsewhere / "b.png")
    (tmp_path / "photos" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(tmp_path / "photos", target_is_directory=True)  # a loop
    listed = images_lib.list_image_files(tmp_path / "photos")
    assert [f.relative_to(tmp_path / "photos").as_posix() for f in listed] == [
        "linked/b.png",
        "trip [2023]/a.png",
    ]
    # A folder reached as itself and through a link is listed under its real name.
    (tmp_path / "photos" / "a_link").symlink_to(trip, target_is_directory=True)
    listed = images_lib.list_image_files(tmp_path / "photos")
    assert [f.relative_to(tmp_path / "photos").as_posix() for f in listed] == [
        "linked/b.png",
        "trip [2023]/a.png",
    ]


def test_bad_options_are_one_error_not_a_skip_of_every_file(folder):
    files = images_lib.list_image_files(folder)
    with pytest.raises(ValueError, match="alpha must be one of"):
        images_lib.load_images(files, alpha="White")
    with pytest.raises(ValueError, match="crop <= resize"):
        images_lib.load_images(files, resize=16, crop=20)


def test_long_names_are_cut_to_fit_a_file_system_and_stay_distinct():
    deep = ["x" * 100 + "/" + "y" * 100 + f"/{c}" * 3 + ".jpg" for c in "ab"]
    names = studies.explain_images.figure_names([*deep, "short.png"])
    assert names[2] == "short"
    assert len(set(names)) == 3
    for name in names[:2]:
        assert len(name.encode()) <= 180 and name.startswith("x" * 100 + "__" + "y" * 60)


def test_figure_names_differ_ignoring_case_for_macos_and_windows_disks():
    names = studies.explain_images.figure_names(
        ["Cat.jpg", "cat.jpg", "CAT.png", "dog.jpg", "sub/Dog.jpg", "Sub/dog.jpg"]
    )
    assert names == ["Cat_jpg", "cat_jpg_2", "CAT_png", "dog", "sub__Dog_jpg", "Sub__dog_jpg_2"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("alpha", "White", r"config\.alpha must be one of"),
        ("crop", 300, r"config\.crop \(300\) must be <= config\.resize \(72\)"),
        ("mean", (123.675, 116.28, 103.53), "divide pixel-scale values by 255"),
        ("ig.rule", "simpson", r"config\.ig\.rule: unknown quadrature rule 'simpson'"),
        ("top_k", 11, r"config\.top_k=11 exceeds the model's 10 classes"),
    ],
)
def test_bad_config_is_refused_before_anything_is_written(folder, tmp_path, field, value, message):
    config = _config()
    *parents, name = field.split(".")
    holder = config
    for parent in parents:
        holder = holder[parent]
    holder[name] = value
    with pytest.raises(ValueError, match=message):
        studies.run_explain_images(config, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_workdir_inside_the_folder_and_another_spelling_of_it_reuse_the_run(
    tmp_path, monkeypatch
):
    photos = tmp_path / "photos"
    photos.mkdir()
    # A Latin-1 name, not UTF-8: Python keeps the byte as a surrogate escape.
    names = [os.fsdecode(b"caf\xe9.png"), "cat.png"]
    for seed, name in enumerate(names):
        Image.fromarray(_gradient(40, 40, seed)).save(photos / name)
    config = _config(TINY_CNN)
    first = studies.run_explain_images(config, photos, photos / "explained")
    assert [p["file"] for p in first.predictions] == names and not first.reused
    assert len(first.figures) == 2 and len(first.summary) == 1  # titles drawn
    monkeypatch.chdir(tmp_path)
    for spelling in ("photos/", "./photos", str(photos)):
        again = studies.run_explain_images(config, spelling, "photos/explained")
        assert again.reused and [p["file"] for p in again.predictions] == names
    elsewhere = studies.run_explain_images(config, photos, tmp_path / "other")
    assert [p["file"] for p in elsewhere.predictions] == names  # not the run's figures
    # A record of the same files with relative paths is the same run, recorded again.
    record = tmp_path / "other" / "inputs.json"
    record.write_text(json.dumps({"images": "photos", "files": [f"photos/{n}" for n in names]}))
    assert studies.run_explain_images(config, "photos", "other").reused
    assert json.loads(record.read_text())["files"] == [str(photos / n) for n in names]
    # That record had no digests: it has them now, and a photo replaced under its own
    # name is refused, as a changed list of files is.
    assert len(json.loads(record.read_text())["sha256"]) == 2
    before = (tmp_path / "other" / "predictions.json").read_bytes()
    Image.fromarray(_gradient(40, 40, 7)).save(photos / "cat.png")
    changed = r"^1 input file\(s\) changed since this folder's results were computed .*cat\.png"
    for workdir in ("other", "photos/explained"):
        with pytest.raises(ValueError, match=changed):
            studies.run_explain_images(config, "photos", workdir)
    assert (tmp_path / "other" / "predictions.json").read_bytes() == before
    Image.fromarray(_gradient(40, 40, 1)).save(photos / "cat.png")  # the original again
    assert studies.run_explain_images(config, "photos", "other").reused
    # The photo folder itself as the workdir: its photos stay inputs.
    for _ in range(2):
        itself = studies.run_explain_images(config, "photos", "photos")
        assert [p["file"] for p in itself.predictions] == names
    assert itself.reused


def test_only_what_the_study_writes_is_left_out_of_its_inputs(tmp_path, monkeypatch):
    run = tmp_path / "photos" / "run"
    (run / "figures").mkdir(parents=True)
    for name in ("a.png", "run/keep.png", "run/figures/a.png", "run/summary.png"):
        Image.fromarray(_gradient(8, 8, 0)).save(tmp_path / "photos" / name)
    for name in ("config.json", "inputs.json"):
        (run / name).write_text("{}")
    monkeypatch.chdir(tmp_path)

    def inputs(images, workdir):
        files = studies.explain_images._inputs(images, Path(workdir))
        return [os.path.relpath(f, images) for f in files]

    for workdir in ("photos", ".", "elsewhere", "photos/run"):
        assert inputs("photos", workdir) == ["a.png", "run/keep.png"]
    assert inputs("photos/run", "elsewhere") == ["keep.png"]  # the folder is a run
    (tmp_path / "photos" / "link.png").symlink_to(tmp_path / "photos" / "a.png")
    assert inputs("photos", "elsewhere") == ["a.png", "run/keep.png"]  # a file once


@pytest.mark.parametrize("taken", ["figures/diagram.png", "summary_trip.png", "batches/b.png"])
def test_a_new_workdir_holding_files_where_outputs_go_is_refused(tmp_path, taken):
    # Not a run yet: the user's files there would be overwritten or taken for outputs.
    (tmp_path / taken).parent.mkdir(parents=True, exist_ok=True)
    for name in ("cat.png", taken):
        Image.fromarray(_gradient(8, 8, 0)).save(tmp_path / name)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    photos = (tmp_path / taken).parent  # the photo folder itself, or one below the workdir
    with pytest.raises(ValueError, match=f"already holds '{tmp_path / taken}'.*another"):
        studies.run_explain_images(_config(TINY_CNN), photos, tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_folder_without_a_readable_image_is_one_error_naming_the_reasons(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.jpg").write_text("not an image\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"none of the 1 file.*{out / 'skipped.json'}"):
        studies.run_explain_images(_config(TINY_CNN), tmp_path / "photos", out)
    (skipped,) = json.loads((out / "skipped.json").read_text())
    assert skipped["file"].endswith("notes.jpg") and "cannot identify" in skipped["reason"]


def test_an_interrupted_run_goes_on_from_the_batch_it_was_in(folder, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    shutil.copytree(folder, photos)
    config = _config(TINY_CNN)
    config.batch_size = 2  # four batches of two files, each with a readable image
    whole = studies.run_explain_images(config, photos, tmp_path / "whole")
    calls = []
    explain = studies.explain_images._Explainer.__call__
    interrupt = True

    def interrupted(self, x):
        calls.append(len(x))
        if len(calls) == 2 and interrupt:
            raise KeyboardInterrupt
        return explain(self, x)

    monkeypatch.setattr(studies.explain_images._Explainer, "__call__", interrupted)

    def cut(workdir):
        nonlocal interrupt
        calls.clear()
        interrupt = True
        with pytest.raises(KeyboardInterrupt):
            studies.run_explain_images(config, photos, workdir)
        assert len(list((workdir / "batches").iterdir())) == 1
        assert not (workdir / "predictions.json").exists()
        calls.clear()
        interrupt = False

    cut(tmp_path / "cut")
    # The finished batch is a result of the recorded config: another is refused.
    with pytest.raises(ValueError, match="another config"):
        studies.run_explain_images(_config(TINY_CNN, steps=7), photos, tmp_path / "cut")
    resumed = studies.run_explain_images(config, photos, tmp_path / "cut")
    assert len(calls) == 3
    assert not (tmp_path / "cut" / "batches").exists()
    assert [p["file"] for p in resumed.predictions] == [p["file"] for p in whole.predictions]
    assert resumed.skipped == whole.skipped
    for name in ("attributions", "pixels", "top_k_probs", "ig_delta"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "cut" / "attributions.npz")[name],
            np.load(tmp_path / "whole" / "attributions.npz")[name],
        )

    # A file of the finished batch changed since: that batch is computed again.
    cut(tmp_path / "changed")
    Image.fromarray(_gradient(30, 30, 7)).save(photos / "notes.jpg", format="JPEG")
    changed = studies.run_explain_images(config, photos, tmp_path / "changed")
    assert len(calls) == 4
    assert "notes.jpg" in [p["file"] for p in changed.predictions]
    assert "notes.jpg" not in [s["file"].rsplit("/", 1)[-1] for s in changed.skipped]


def test_other_weights_under_any_name_are_refused_once_a_result_exists(
    folder, tmp_path, monkeypatch
):
    """The weights are an input known by their SHA-256: another file under the same
    name is refused even halfway through a run (every saved batch depends on them);
    the same file by another path or a copy of it is accepted."""
    from fmi_jax.studies import explain_images

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "w.npz"
    np.savez(weights, a=np.zeros(3, np.float32))
    out = tmp_path / "out"
    files = explain_images._inputs(folder, out)

    def claim(path):
        config = _config()
        config.weights = str(path)
        explain_images._claim(config, folder, files, out)

    claim("w.npz")
    (out / "batches").mkdir()
    (out / "batches" / "00000.npz").write_bytes(b"")  # a finished batch: a result
    claim(weights)  # the absolute path of the same file
    shutil.copy(weights, tmp_path / "copy.npz")
    claim(tmp_path / "copy.npz")
    recorded = json.loads((out / "inputs.json").read_text())["weights"]
    assert recorded["file"] == str(tmp_path / "copy.npz")
    np.savez(weights, a=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"config\.weights: .*copy\.npz', and .*w\.npz' holds"):
        claim(weights)
    np.savez(tmp_path / "copy.npz", a=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"copy\.npz' changed since this folder") as error:
        claim(tmp_path / "copy.npz")
    assert str(error.value).endswith("Nothing was overwritten.")
    with pytest.raises(ValueError, match="random weights"):
        claim("")
    assert json.loads((out / "inputs.json").read_text())["weights"] == recorded
    # A record written before the digest was kept: the path is what can be compared.
    legacy = json.loads((out / "inputs.json").read_text())
    del legacy["weights"]
    (out / "inputs.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"another config \(weights: "):
        claim(weights)
    claim(tmp_path / "copy.npz")


def test_an_edited_file_that_is_still_no_image_does_not_block_reuse(folder, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(folder, photos)
    config = _config(TINY_CNN)
    studies.run_explain_images(config, photos, tmp_path / "out")
    with open(photos / "notes.jpg", "a") as notes:
        notes.write("another line\n")
    assert studies.run_explain_images(config, photos, tmp_path / "out").reused
    before = (tmp_path / "out" / "predictions.json").read_text()
    # Now an image: the results lack it, so the folder's results are refused.
    Image.fromarray(_gradient(30, 30, 7)).save(photos / "notes.jpg", format="JPEG")
    with pytest.raises(ValueError, match=r"1 input file\(s\) changed .*notes\.jpg"):
        studies.run_explain_images(config, photos, tmp_path / "out")
    assert (tmp_path / "out" / "predictions.json").read_text() == before


@pytest.mark.slow
def test_pipeline_writes_every_output(run, folder):
    config, workdir, result = run
    predictions = json.loads((workdir / "predictions.json").read_text())["images"]
    assert sorted(p["file"] for p in predictions) == sorted(GOOD)
    assert predictions == result.predictions
    for p in predictions:
        probs = [t["prob"] for t in p["top_k"]]
        assert len(probs) == config.top_k
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert p["ig_target"] == p["top_k"][0]["class"]
        assert np.isfinite(p["ig_delta"]) and p["seconds"] >= 0
        assert (workdir / p["figure"]).stat().st_size > 5_000
        assert p["top_k"][0]["label"].startswith("class ")  # 10 classes: not ImageNet's
    assert {p["figure"] for p in predictions} >= {"figures/sub__nested.png", "figures/rgb.png"}
    skipped = json.loads((workdir / "skipped.json").read_text())
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in skipped) == sorted(BAD)
    assert all(s["reason"] for s in skipped)
    assert result.skipped == skipped
    saved = np.load(workdir / "attributions.npz")
    assert saved["attributions"].shape == (len(GOOD), 64, 64, 3)
    assert saved["pixels"].shape == (len(GOOD), 64, 64, 3)
    assert saved["files"].tolist() == [p["file"] for p in predictions]
    # Per-image figures: the four panels, drawn in this run.
    assert set(result.figures) == set(GOOD)
    for figure in result.figures.values():
        assert figure.panels == plotting.IMAGE_PANELS
    # Six images, four per page: two pages, each with an image and a map per image.
    assert [f.path.name for f in result.summary] == ["summary_001.png", "summary_002.png"]
    assert result.summary[0].panels == tuple(p for i in range(4) for p in (f"image_{i}", f"ig_{i}"))
    assert len(result.summary[1].panels) == 4
    assert not (workdir / "summary.png").exists()


def test_rerun_reuses_and_a_different_config_is_refused(run, folder):
    config, workdir, _ = run
    again = studies.run_explain_images(config, folder, workdir)
    assert again.reused and not again.figures and not again.summary
    # ig.batch_size bounds memory only: another is accepted.
    smaller = _config(batch_size=int(config.ig.batch_size) // 2)
    assert studies.run_explain_images(smaller, folder, workdir).reused
    changed = _config(steps=9)
    before = (workdir / "predictions.json").read_text()
    with pytest.raises(ValueError, match="another config"):
        studies.run_explain_images(changed, folder, workdir)
    with pytest.raises(ValueError, match="other input files"):
        studies.run_explain_images(config, folder / "sub", workdir)
    assert (workdir / "predictions.json").read_text() == before


@pytest.mark.slow
def test_ig_beyond_300_steps_is_chunked_and_converges(folder, tmp_path):
    # 320 steps in chunks of 64 (image, step) pairs: memory of one chunk, not of 320.
    runs = {
        steps: studies.run_explain_images(
            _config(TINY_CNN, steps=steps, batch_size=64), folder / "sub", tmp_path / str(steps)
        )
        for steps in (8, 320)
    }
    (coarse,), (fine,) = runs[8].predictions, runs[320].predictions
    assert fine["file"] == "nested.png" and fine["ig_target"] == coarse["ig_target"]
    assert abs(fine["ig_delta"]) < 0.5 * abs(coarse["ig_delta"])
    assert fine["ig_relative_delta"] < 0.05
    maps = [np.load(tmp_path / str(s) / "attributions.npz")["attributions"] for s in (8, 320)]
    assert np.isfinite(maps[1]).all() and maps[1].shape == maps[0].shape

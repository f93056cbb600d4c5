"""Image files from a folder or a glob, decoded and preprocessed like torchvision's
ImageNet evaluation preset. Numpy and Pillow only (no jax).

    folder = load_image_folder("photos/", resize=256, crop=224)
    folder.images   # (N, 224, 224, 3) float32, normalised with the ImageNet mean / std
    folder.pixels   # (N, 224, 224, 3) uint8, the same crops before scaling
    folder.files    # the N decoded files
    folder.skipped  # (file, reason) for every file that is not a readable image

Which files (:func:`list_image_files`):

* a folder is searched **recursively** (through symbolic links too; a file reached
  twice is listed once), sorted by relative path; names starting with
  a dot (hidden files and folders, ``.DS_Store``) are ignored; every other file is a
  candidate whatever its extension, and one Pillow cannot decode is skipped with the
  reason (so a ``README.txt`` next to the photos is listed as skipped, not fatal);
* a pattern containing ``*``, ``?`` or ``[`` is a glob (``**`` recurses); folders it
  matches are searched like a folder; a path that exists is itself, whatever its
  name holds (``trip [2023]/``);
* a single file is itself;
* a folder without files, or a glob matching nothing, raises FileNotFoundError
  naming the path.

Decoding (:func:`decode`, :func:`to_rgb`): Pillow opens the file and decodes it fully
(truncated files fail here, ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone); the
first frame of animated or multi-page files is used; the EXIF orientation is applied
(photos appear as a viewer shows them); then

* grayscale ('L', '1', 16-bit 'I;16') becomes three equal channels;
* palette ('P') is expanded through its palette;
* **alpha** (RGBA, LA, a palette, grayscale or RGB image with a transparent colour)
  is **composited over white** by default (``alpha='white'``), so transparent regions
  look as they do in a viewer rather than showing whatever colour the encoder left
  under them; ``alpha='drop'`` discards the alpha channel instead
  (``Image.convert('RGB')``, torchvision's ``ImageFolder`` loader);
* CMYK, YCbCr and other modes go through ``Image.convert('RGB')``;
* 16-bit data that Pillow opens as 32-bit integers (a 16-bit PGM or PPM, whose
  header declares its depth) keeps its top 8 bits too; a 16-bit grayscale PNG's
  transparent grey is composited over white like any transparent colour, and a
  16-bit RGB PNG's transparent colour is matched on the top 8 bits Pillow keeps of
  its pixels (pixels that differ only below them look the same anyway); other
  32-bit integer and floating-point images ('I', 'F': scientific TIFFs, whatever
  their values) are refused with the reason: their value range is the writer's
  choice, and Pillow's conversion would clip them to black or white;
* HEIC/HEIF photos (the iPhone's default) need the ``pillow-heif`` plugin: when it is
  installed it is registered on the first such file, otherwise the file is skipped
  with a reason that says to install it.

Preprocessing (:func:`resize_and_crop`, :func:`normalize`, :func:`preprocess`),
torchvision's ``ImageClassification`` preset step by step: resize the shorter side to
``resize`` with Pillow's antialiased bilinear filter (the longer side becomes
``int(resize * long / short)``), center-crop ``crop`` x ``crop`` (offsets
``int(round((size - crop) / 2))``), scale to [0, 1] by ``/ 255`` and normalise with
``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from fmi_jax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, normalize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "check_mean_std",
    "decode",
    "load_image_folder",
    "load_images",
    "list_image_files",
    "normalize",
    "preprocess",
    "resize_and_crop",
    "to_rgb",
]

ALPHA_MODES = ("white", "drop")
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass
class ImageFolder:
    """Decoded images: normalised crops, their uint8 pixels, files, skipped files."""

    images: np.ndarray  # (N, crop, crop, 3) float32, normalised
    pixels: np.ndarray  # (N, crop, crop, 3) uint8, before scaling
    files: list[Path]
    skipped: list[tuple[Path, str]]


def _walk(folder: Path) -> list[Path]:
    """The non-hidden files below ``folder``, sorted by relative path. Symbolic links to
    folders are followed, each real folder once (a link back up is not a loop)."""
    files, seen = [], set()
    for where, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(where)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        # Real folders before links to them, each in name order: a folder reached both
        # ways is listed under the same path wherever the tree is copied.
        folders[:] = sorted(
            (f for f in folders if not f.startswith(".")),
            key=lambda f: (os.path.islink(os.path.join(where, f)), f),
        )
        files.extend(Path(where, name) for name in names if not name.startswith("."))
    return sorted((f for f in files if f.is_file()), key=lambda f: f.relative_to(folder).as_posix())


def _unique(files: list[Path]) -> list[Path]:
    """``files`` without repeats of one file (the same real path, reached through a
    link or two patterns), the first kept."""
    first: dict[str, Path] = {}
    for file in files:
        first.setdefault(os.path.realpath(file), file)
    return list(first.values())


def list_image_files(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """Candidate files of a folder (recursive), a glob, one file, or a list of those.

    Raises FileNotFoundError naming the path when nothing is found (see the module
    docstring for the rules).
    """
    if not isinstance(images, (str, Path)):
        files = [f for spec in images for f in list_image_files(spec)]
        if not files:
            raise FileNotFoundError(f"no files in {list(images)}")
        return _unique(files)
    spec = str(images)
    # A path that exists is that path, even when its name holds '[' or '?'.
    if _GLOB_CHARS & set(spec) and not Path(spec).exists():
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
        files = []
        for match in matches:
            files.extend(_walk(match) if match.is_dir() else [match] if match.is_file() else [])
        if not files:
            raise FileNotFoundError(f"the glob {spec!r} matches no files")
        return _unique(files)
    path = Path(spec)
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise FileNotFoundError(f"the folder {str(path)!r} holds no (non-hidden) files")
        return _unique(files)
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no such file or folder: {str(path)!r}")


def _check_alpha(alpha: str) -> None:
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")


def _check_options(*, resize: int, crop: int, alpha: str) -> None:
    _check_alpha(alpha)
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")


def to_rgb(image: Image.Image, *, alpha: str = "white") -> Image.Image:
    """An 'RGB' copy of a Pillow image: grayscale repeated, palette expanded, alpha
    composited over white (``alpha='white'``) or dropped (``alpha='drop'``)."""
    return _to_rgb(image, alpha=alpha, at_most_16_bits=image.format in _AT_MOST_16_BITS)


# File formats whose integer pixels have at most 16 bits: Pillow opens a 16-bit PGM or
# PPM (scaled to 0..65535), and before Pillow 10.3 a 16-bit grey PNG, as 32-bit 'I'.
_AT_MOST_16_BITS = ("PPM", "PNG")


def _to_rgb(
    image: Image.Image, *, alpha: str, at_most_16_bits: bool, sixteen_bit_rgb: bool = False
) -> Image.Image:
    """:func:`to_rgb`; ``at_most_16_bits``: the image was read from a file format whose
    integer pixels have at most 16 bits, so its 'I' mode is 16-bit data; any other 'I'
    image is refused. ``sixteen_bit_rgb``: read from a 16-bit RGB PNG (its transparent
    colour is in 16 bits; without the flag, a colour above 255 says so)."""
    _check_alpha(alpha)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy()
    clear = image.info.get("transparency")
    if mode == "RGB" and isinstance(clear, tuple) and (sixteen_bit_rgb or max(clear) > 255):
        # A 16-bit RGB PNG: Pillow keeps each value's top 8 bits but its transparent
        # colour in 16, which no pixel would match; it is matched on those 8 bits.
        image = image.copy()
        image.info["transparency"] = tuple(int(v) >> 8 for v in clear)
    if mode.startswith("I;16") or (mode == "I" and at_most_16_bits):
        values = np.asarray(image)
        clear = image.info.get("transparency")
        if clear is not None and alpha == "white":
            return _grey_16(np.where(values == clear, 0xFFFF, values))
        return _grey_16(values)
    if mode in ("I", "F"):
        raise ValueError(
            f"a 32-bit {'integer' if mode == 'I' else 'floating-point'} image (mode "
            f"{mode!r}) has no fixed value range: save it with 8 or 16 bits per channel"
        )
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    if alpha == "drop":
        return rgba.convert("RGB")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _grey_16(values: np.ndarray) -> Image.Image:
    """16-bit grayscale as 'RGB', its top 8 bits in every channel (Pillow's convert
    would clip at 255)."""
    top = (np.asarray(values, np.uint32) >> 8).astype(np.uint8)
    return Image.fromarray(top, mode="L").convert("RGB")


def decode(path: str | Path, *, alpha: str = "white") -> Image.Image:
    """The file's first frame, fully decoded, EXIF-oriented, as 'RGB' (see :func:`to_rgb`).

    Raises whatever Pillow raises for files that are not (complete) images
    (``PIL.UnidentifiedImageError``, ``OSError`` for truncated data, ...).
    """
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        if not _is_heif(path):
            raise
        _register_heif(path)
        image = Image.open(path)
    with image:
        # Read before loading, which clears it: how the file stores its pixels.
        tile = getattr(image, "tile", None) or ()  # a plugin's image may have none
        rawmode = tile[0][3] if len(tile[0] if tile else ()) > 3 else None
        image.seek(0)
        image.load()
        # The transposed copy forgets the format.
        at_most_16_bits = image.format in _AT_MOST_16_BITS
        oriented = ImageOps.exif_transpose(image)
        return _to_rgb(
            oriented,
            alpha=alpha,
            at_most_16_bits=at_most_16_bits,
            sixteen_bit_rgb=image.format == "PNG" and rawmode in ("RGB;16B", "RGB;16"),
        )


# ISO base media file brands of HEIF stills and sequences (not AVIF, which Pillow reads).
_HEIF_BRANDS = frozenset((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"))


def _is_heif(path: str | Path) -> bool:
    with open(path, "rb") as file:
        head = file.read(12)
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _register_heif(path: str | Path) -> None:
    """Registers the ``pillow-heif`` opener with Pillow; without the plugin, raises
    UnidentifiedImageError saying how to install it."""
    try:
        import pillow_heif  # noqa: PLC0415  (optional plugin, only for HEIF files)
    except ImportError:
        raise UnidentifiedImageError(
            f"{str(path)!r} is a HEIC/HEIF image, which Pillow reads only with the "
            "pillow-heif plugin: pip install pillow-heif"
        ) from None
    pillow_heif.register_heif_opener()


def _as_pil(image: Image.Image | np.ndarray, alpha: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image, alpha=alpha)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"array images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {array.shape}")
    return to_rgb(Image.fromarray(array), alpha=alpha)


def resize_and_crop(
    image: Image.Image | np.ndarray, *, resize: int = 256, crop: int = 224, alpha: str = "white"
) -> np.ndarray:
    """Shorter side to ``resize`` (antialiased bilinear), center ``crop`` x ``crop``:
    an (crop, crop, 3) uint8 array. Accepts a Pillow image (any mode) or a uint8 array."""
    _check_options(resize=resize, crop=crop, alpha=alpha)
    rgb = _as_pil(image, alpha)
    width, height = rgb.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8)
    top = int(round((array.shape[0] - crop) / 2.0))
    left = int(round((array.shape[1] - crop) / 2.0))
    return np.ascontiguousarray(array[top : top + crop, left : left + crop])


def preprocess(
    image: Image.Image | np.ndarray,
    *,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    alpha: str = "white",
) -> np.ndarray:
    """One image -> the (crop, crop, 3) float32 model input (the whole preset)."""
    return normalize(resize_and_crop(image, resize=resize, crop=crop, alpha=alpha), mean, std)


def load_images(
    files: Sequence[str | Path],
    *,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    alpha: str = "white",
) -> ImageFolder:
    """Decodes and preprocesses ``files``; unreadable ones are skipped (not raised) and
    listed in ``skipped`` with the reason. Bad options are a ValueError before any file
    is read (not a reason to skip every file)."""
    _check_options(resize=resize, crop=crop, alpha=alpha)
    pixels, good, skipped = [], [], []
    for file in map(Path, files):
        try:
            rgb = decode(file, alpha=alpha)
        except Exception as error:  # noqa: BLE001  (any decoder failure: skip the file)
            skipped.append((file, f"{type(error).__name__}: {error}"))
            continue
        pixels.append(resize_and_crop(rgb, resize=resize, crop=crop))
        good.append(file)
    stacked = np.stack(pixels) if pixels else np.zeros((0, crop, crop, 3), np.uint8)
    return ImageFolder(normalize(stacked, mean, std), stacked, good, skipped)


def load_image_folder(
    images: str | Path | Sequence[str | Path],
    *,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    alpha: str = "white",
) -> ImageFolder:
    """Every image of a folder (recursive), glob or file list, preprocessed.

    Raises FileNotFoundError when there are no candidate files; files that are not
    readable images are skipped with a warning listing them.
    """
    files = list_image_files(images)
    folder = load_images(files, resize=resize, crop=crop, mean=mean, std=std, alpha=alpha)
    if folder.skipped:
        logging.warning(
            "skipped %d file(s) that are not readable images:\n%s",
            len(folder.skipped),
            "\n".join(f"  {f}: {r}" for f, r in folder.skipped),
        )
    return folder

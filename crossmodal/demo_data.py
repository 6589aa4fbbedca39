"""A small synthetic captioned image set in the Flickr30K layout, so the pipeline runs offline.

Each image holds one or two coloured shapes (kind, colour, size, position) on a varied background;
each gets 5 differently worded captions built from the same scene description, so single words
("circle", "red", "left", "striped") are meaningful queries. Output layout::

    OUT/images/demo_00000.jpg ...
    OUT/captions.token            lines "demo_00000.jpg#0<TAB>A large red circle ... ."
    OUT/splits/{train,val,test}.txt
    OUT/demo_manifest.json        the generation arguments; written last, marks the output complete

Everything is seeded: the same arguments give byte-identical files. Image i depends only on
(seed, i), not on the number of images, so a larger set extends a smaller one.
"""
from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from crossmodal.atomic_io import atomic_open, atomic_write_json, atomic_write_text
from crossmodal.captions import SPLIT_NAMES, list_hash, make_seeded_split

log = logging.getLogger(__name__)

# Bump when the images or captions for the same arguments change, so old outputs are regenerated.
GENERATOR_VERSION = 2  # 2: shapes kept inside the image (v1 clipped large ones at the edge)
MANIFEST_NAME = "demo_manifest.json"
CAPTIONS_NAME = "captions.token"
IMAGES_DIRNAME = "images"
SPLITS_DIRNAME = "splits"
CAPTIONS_PER_IMAGE = 5
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
DEFAULT_NUM_IMAGES = 2000
DEFAULT_SEED = 0
DEFAULT_IMAGE_SIZE = 128
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges without per-shape antialiasing
MAX_NUM_IMAGES = 100_000  # the 5-digit file names


class DemoDataError(RuntimeError):
    """The output folder cannot be used as asked; the message says why and what to do."""


# --- vocabulary -----------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 175),
    "pink": (245, 125, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BG_EXTRA_COLORS: dict[str, tuple[int, int, int]] = {"grey": (128, 128, 128)}
# Pairs too alike to tell apart at 128 px: never shape-on-background.
_SIMILAR = {frozenset(p) for p in [("yellow", "white"), ("yellow", "orange"), ("red", "orange"),
                                    ("red", "pink"), ("purple", "blue"), ("black", "grey"),
                                    ("white", "grey"), ("pink", "white")]}

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
# Synonyms keep each kind's head noun recognisable ("circle" never names a ring).
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape", "filled circle", "dot"),
    "square": ("square", "box", "square shape", "block"),
    "triangle": ("triangle", "triangular shape", "triangle pointing up"),
    "star": ("star", "five-pointed star", "star shape"),
    "ring": ("ring", "hollow ring", "hoop", "donut shape"),
    "cross": ("cross", "plus sign", "plus shape", "cross shape"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
    "hexagon": ("hexagon", "six-sided shape", "hexagonal shape"),
}
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITIONS = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side", "in the left half"),
    "right": ("on the right", "at the right", "on the right side", "in the right half"),
    "top": ("at the top", "near the top", "in the upper part", "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part", "at the bottom of the picture"),
    "centre": ("in the centre", "in the middle", "at the center", "in the center of the image"),
}
# Two shapes always sit at opposite sides, so they never overlap and a relation word is true.
POSITION_PAIRS = (("left", "right"), ("top", "bottom"))
BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "checkered")


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    position: str


@dataclass(frozen=True)
class Background:
    kind: str
    color: str
    color2: str  # second colour for gradient/stripes/checkered; unused otherwise
    orientation: str  # "horizontal" | "vertical" (gradient/stripes)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: Background


def image_name(index: int) -> str:
    return f"demo_{index:05d}.jpg"


# --- scenes ---------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def make_scene(seed: int, index: int) -> Scene:
    """The scene of image ``index``; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index, 0])
    n_shapes = 1 if rng.random() < 0.6 else 2
    if n_shapes == 1:
        positions: tuple[str, ...] = (_pick(rng, POSITIONS),)
    else:
        pair = _pick(rng, POSITION_PAIRS)
        positions = pair if rng.random() < 0.5 else pair[::-1]
    shapes = tuple(
        Shape(_pick(rng, SHAPES), _pick(rng, list(COLORS)), _pick(rng, SIZES), pos) for pos in positions
    )
    shape_colors = {s.color for s in shapes}
    bg_names = [c for c in list(COLORS) + list(BG_EXTRA_COLORS)
                if c not in shape_colors and not any(frozenset((c, s)) in _SIMILAR for s in shape_colors)]
    kind = _pick(rng, BACKGROUNDS)
    color = _pick(rng, bg_names)
    color2 = _pick(rng, [c for c in bg_names if c != color and frozenset((c, color)) not in _SIMILAR]
                   or [c for c in bg_names if c != color])
    orientation = _pick(rng, ("horizontal", "vertical"))
    return Scene(shapes, Background(kind, color, color2, orientation))


# --- drawing --------------------------------------------------------------------------------------

def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLORS.get(name) or BG_EXTRA_COLORS[name], dtype=np.float32)


def _background_tone(name: str) -> np.ndarray:
    # Backgrounds are muted toward grey so the saturated shapes stand out on them.
    return 0.75 * _rgb(name) + 0.25 * 128.0


def _draw_background(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    # 1-D masks broadcast to 2-D keep this cheap: no full coordinate grids per image.
    c1, c2 = _background_tone(bg.color), _background_tone(bg.color2)
    idx = np.arange(size)
    vertical = bg.orientation == "vertical"  # vertical stripes / a left-to-right ramp vary along x

    def along(v: np.ndarray) -> np.ndarray:
        return v[None, :, None] if vertical else v[:, None, None]

    if bg.kind == "plain":
        arr = np.broadcast_to(c1, (size, size, 3))
    elif bg.kind == "gradient":
        t = along(np.linspace(0.0, 1.0, size, dtype=np.float32))
        arr = np.broadcast_to(c1 * (1 - t) + c2 * t, (size, size, 3))
    elif bg.kind == "stripes":
        width = int(rng.integers(max(1, size // 16), size // 8 + 1))
        arr = np.broadcast_to(np.where(along((idx // width) % 2 == 0), c1, c2), (size, size, 3))
    elif bg.kind == "checkered":
        tile = int(rng.integers(max(1, size // 10), size // 6 + 1))
        cells = (idx // tile)[:, None] + (idx // tile)[None, :]
        arr = np.where((cells % 2 == 0)[..., None], c1, c2)
    elif bg.kind == "noise":
        arr = c1 + rng.normal(0.0, 45.0, size=(size, size, 1)).astype(np.float32)
    else:  # pragma: no cover - BACKGROUNDS lists every kind handled above
        raise ValueError(f"unknown background kind {bg.kind!r}")
    return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8))


def _star_points(cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    angles = rotation - np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _polygon_points(cx: float, cy: float, r: float, sides: int, rotation: float) -> list[tuple[float, float]]:
    angles = rotation - np.pi / 2 + np.arange(sides) * 2 * np.pi / sides
    return list(zip(cx + r * np.cos(angles), cy + r * np.sin(angles)))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, size: int, rng: np.random.Generator) -> None:
    # Centres sit a quarter in from the named edge. The widest kinds reach 1.1 r from the centre, so
    # jitter (size/32) + 1.1 * 0.19 * size < size/4: even a large shape stays inside its half, never
    # clipped by the border nor overlapping the other shape (always in the opposite half).
    q = size / 4
    centres = {"left": (q, 2 * q), "right": (3 * q, 2 * q), "top": (2 * q, q),
               "bottom": (2 * q, 3 * q), "centre": (2 * q, 2 * q)}
    cx, cy = centres[shape.position]
    jitter = size / 32
    cx += float(rng.uniform(-jitter, jitter))
    cy += float(rng.uniform(-jitter, jitter))
    lo, hi = (0.07, 0.10) if shape.size == "small" else (0.16, 0.19)
    r = size * float(rng.uniform(lo, hi))
    fill = 255  # drawn into a mask; the colour is applied when the mask is pasted
    kind = shape.kind
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(0.35 * r)))
    elif kind == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon_points(cx, cy + 0.15 * r, 1.1 * r, 3, 0.0), fill=fill)
    elif kind == "star":
        draw.polygon(_star_points(cx, cy, 1.1 * r, 0.0), fill=fill)
    elif kind == "cross":
        a = 0.32 * r
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    elif kind == "hexagon":
        draw.polygon(_polygon_points(cx, cy, r, 6, np.pi / 6), fill=fill)
    else:  # pragma: no cover - SHAPES lists every kind handled above
        raise ValueError(f"unknown shape kind {kind!r}")


def render_scene(scene: Scene, seed: int, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """The RGB image of a scene; its random texture and jitter depend only on (seed, index)."""
    rng = np.random.default_rng([seed, index, 1])
    img = Image.fromarray(_draw_background(scene.background, image_size, rng), "RGB")
    big = image_size * SUPERSAMPLE
    for shape in scene.shapes:
        # Each shape is drawn as a 2x mask and box-downsampled: antialiased edges for the cost of a
        # small greyscale image, not of supersampling the whole textured background.
        mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, big, rng)
        mask = mask.resize((image_size, image_size), Image.Resampling.BOX)
        img.paste(COLORS[shape.color], (0, 0, image_size, image_size), mask)
    return img


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fixed encoder settings (no optimize/progressive choice left to defaults) keep bytes stable.
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return buf.getvalue()


# --- captions -------------------------------------------------------------------------------------

def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _object_phrase(shape: Shape, rng: np.random.Generator) -> str:
    """'a big red disc' / 'a red star' / 'a small triangle in green' ... (with article)."""
    noun = _pick(rng, SHAPE_NOUNS[shape.kind])
    size = _pick(rng, SIZE_WORDS[shape.size])
    style = int(rng.integers(4))
    if style == 0:
        return _a(f"{size} {shape.color} {noun}")
    if style == 1:
        return _a(f"{shape.color} {noun}")
    if style == 2:
        return _a(f"{size} {noun} in {shape.color}")
    return _a(f"{size} {noun} coloured {shape.color}")


def _background_phrase(bg: Background, rng: np.random.Generator) -> str:
    c, c2 = bg.color, bg.color2
    options = {
        "plain": (f"on a plain {c} background", f"against a solid {c} backdrop",
                  f"on a {c} background", f"on a uniform {c} background"),
        "gradient": (f"on a {c} to {c2} gradient", f"against a gradient background from {c} to {c2}",
                     f"on a background fading from {c} to {c2}", f"on a {c} and {c2} gradient background"),
        "stripes": (f"on a {c} striped background", f"over {bg.orientation} {c} and {c2} stripes",
                    f"against a backdrop of {c} and {c2} stripes", f"on a background with {bg.orientation} stripes"),
        "noise": (f"on a noisy {c} background", f"on a speckled {c} background",
                  f"against grainy {c} noise", f"on a {c} background full of noise"),
        "checkered": (f"on a {c} checkered background", f"on a checkerboard of {c} and {c2}",
                      f"against a {c} and {c2} checkered pattern", f"on a checked {c} background"),
    }
    return _pick(rng, options[bg.kind])


class _Phrases:
    """Fresh synonym draws for one caption: each call may word the same fact differently."""

    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene, self.rng = scene, rng

    def obj(self, i: int = 0) -> str:
        return _object_phrase(self.scene.shapes[i], self.rng)

    def noun(self, i: int = 0) -> str:
        return _pick(self.rng, SHAPE_NOUNS[self.scene.shapes[i].kind])

    def size(self, i: int = 0) -> str:
        return _pick(self.rng, SIZE_WORDS[self.scene.shapes[i].size])

    def pos(self, i: int = 0) -> str:
        return _pick(self.rng, POSITION_PHRASES[self.scene.shapes[i].position])

    def bg(self) -> str:
        return _background_phrase(self.scene.background, self.rng)

    def rel(self) -> str:
        """How shape 0 sits relative to shape 1 (they are always at opposite sides)."""
        pair = (self.scene.shapes[0].position, self.scene.shapes[1].position)
        return _pick(self.rng, {
            ("left", "right"): ("to the left of", "beside", "next to"),
            ("right", "left"): ("to the right of", "beside", "next to"),
            ("top", "bottom"): ("above", "over"),
            ("bottom", "top"): ("below", "under"),
        }[pair])


_Template = Callable[[_Phrases, Scene], str]

TEMPLATES_ONE: tuple[_Template, ...] = (
    lambda p, s: f"{_cap(p.obj())} {p.pos()} {p.bg()}",
    lambda p, s: f"There is {p.obj()} {p.pos()} {p.bg()}",
    lambda p, s: f"{_cap(p.obj())} {p.bg()}",
    lambda p, s: f"{_cap(p.obj())} {p.pos()}",
    lambda p, s: f"An image of {p.obj()} {p.pos()}",
    lambda p, s: f"{_cap(s.shapes[0].color)} {p.noun()} {p.pos()}",
    lambda p, s: f"A picture showing {p.obj()} {p.bg()}",
    lambda p, s: f"{_cap(p.pos())} , {p.obj()} {p.bg()}",
    lambda p, s: f"{_cap(p.size())} {s.shapes[0].color} {p.noun()} placed {p.pos()}",
    lambda p, s: f"A single {p.noun()} , {s.shapes[0].color} and {p.size()} , {p.pos()}",
)

TEMPLATES_TWO: tuple[_Template, ...] = (
    lambda p, s: f"{_cap(p.obj(0))} {p.pos(0)} and {p.obj(1)} {p.pos(1)} {p.bg()}",
    lambda p, s: f"Two shapes , {p.obj(0)} and {p.obj(1)} , {p.bg()}",
    lambda p, s: f"{_cap(p.obj(0))} {p.rel()} {p.obj(1)}",
    lambda p, s: f"There are two shapes : {p.obj(0)} {p.pos(0)} and {p.obj(1)} {p.pos(1)}",
    lambda p, s: f"{_cap(p.obj(1))} {p.pos(1)} and {p.obj(0)} {p.pos(0)}",
    lambda p, s: f"{_cap(p.obj(0))} and {p.obj(1)} {p.bg()}",
    lambda p, s: f"{_cap(_a(s.shapes[0].color))} {p.noun(0)} and {_a(s.shapes[1].color)} {p.noun(1)}",
    lambda p, s: f"An image with {p.obj(0)} {p.rel()} {p.obj(1)} {p.bg()}",
)


def make_captions(scene: Scene, seed: int, index: int, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` distinct captions, each from a different template, in Flickr30K style (' .' ending)."""
    rng = np.random.default_rng([seed, index, 2])
    templates = TEMPLATES_ONE if len(scene.shapes) == 1 else TEMPLATES_TWO
    if n > len(templates):
        raise ValueError(f"at most {len(templates)} captions per image, asked for {n}")
    phrases = _Phrases(scene, rng)
    captions: list[str] = []
    for t in rng.permutation(len(templates))[:n]:
        text = " ".join(templates[int(t)](phrases, scene).split()) + " ."
        captions.append(text)
    return captions


# --- output ---------------------------------------------------------------------------------------

def manifest_for(num_images: int, seed: int, image_size: int) -> dict[str, Any]:
    """What a complete output records; equal manifests mean byte-identical outputs."""
    return {
        "generator": "demo_data",
        "version": GENERATOR_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
        "captions_per_image": CAPTIONS_PER_IMAGE,
    }


def is_complete(out: Path, manifest: dict[str, Any]) -> bool:
    """True when ``out`` holds a finished output made with exactly these arguments."""
    path = out / MANIFEST_NAME
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if {k: stored.get(k) for k in manifest} != manifest:
        return False
    # The manifest is written last, but files may have been deleted since: check they are there.
    needed = [out / CAPTIONS_NAME] + [out / SPLITS_DIRNAME / f"{s}.txt" for s in SPLIT_NAMES]
    if not all(p.is_file() for p in needed):
        return False
    present = set(os.listdir(out / IMAGES_DIRNAME)) if (out / IMAGES_DIRNAME).is_dir() else set()
    return all(image_name(i) in present for i in range(manifest["num_images"]))


def _check_out_dir(out: Path, force: bool) -> None:
    # Refuse to write into a folder that holds something other than a (partial) demo set.
    if out.exists() and not out.is_dir():  # not even --force can write a folder over a file
        raise DemoDataError(f"--out {out} exists and is not a folder")
    if not out.exists() or force or (out / MANIFEST_NAME).exists():
        return
    ours = {IMAGES_DIRNAME, CAPTIONS_NAME, SPLITS_DIRNAME, MANIFEST_NAME}
    foreign = sorted(n for n in os.listdir(out) if n not in ours and not n.startswith("."))
    if foreign:
        raise DemoDataError(
            f"--out {out} already holds files that are not a demo set (e.g. {foreign[:3]}); "
            "pick an empty folder, or pass --force to write there anyway"
        )


def _remove_stale_images(images_dir: Path, keep: set[str]) -> None:
    # Only our own file pattern (and our temp files) is touched, never other files.
    for name in os.listdir(images_dir):
        stale = name.startswith("demo_") and name.endswith(".jpg") and name not in keep
        leftover_tmp = name.startswith(".demo_") and name.endswith(".tmp")
        if stale or leftover_tmp:
            (images_dir / name).unlink()


def generate(
    out: str | os.PathLike,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = DEFAULT_SEED,
    image_size: int = DEFAULT_IMAGE_SIZE,
    force: bool = False,
    progress: bool = True,
) -> bool:
    """Write the demo set under ``out``; returns False (a no-op) when it is already complete.

    The manifest is removed first and written last, so a killed run is never taken as complete.
    """
    if not 1 <= num_images <= MAX_NUM_IMAGES:
        raise DemoDataError(f"--num-images must be between 1 and {MAX_NUM_IMAGES}, got {num_images}")
    if image_size < 16:
        raise DemoDataError(f"--image-size must be at least 16 pixels, got {image_size}")
    out = Path(out)
    manifest = manifest_for(num_images, seed, image_size)
    if not force and is_complete(out, manifest):
        log.info("%s already holds the demo set for these arguments; nothing to do (--force remakes it)", out)
        return False
    _check_out_dir(out, force)

    images_dir = out / IMAGES_DIRNAME
    images_dir.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    names = [image_name(i) for i in range(num_images)]
    _remove_stale_images(images_dir, set(names))

    from tqdm import tqdm  # only the generation needs it; imports stay light for a no-op rerun

    lines: list[str] = []
    for i, name in enumerate(tqdm(names, desc="demo images", unit="img", disable=not progress)):
        scene = make_scene(seed, i)
        data = encode_jpeg(render_scene(scene, seed, i, image_size))
        with atomic_open(images_dir / name, "wb", fsync=False) as f:
            f.write(data)
        lines.extend(f"{name}#{n}\t{text}\n" for n, text in enumerate(make_captions(scene, seed, i)))
    atomic_write_text(out / CAPTIONS_NAME, "".join(lines))

    splits = make_seeded_split(names, seed, SPLIT_FRACTIONS)
    for split in SPLIT_NAMES:
        atomic_write_text(out / SPLITS_DIRNAME / f"{split}.txt", "".join(f"{n}\n" for n in splits[split]))

    # The images are not fsynced one by one (2,000 fsyncs took longer than making them): a killed
    # process loses nothing the kernel holds, and after a power loss `--force` remakes the set.
    atomic_write_json(out / MANIFEST_NAME, {
        **manifest,
        "images_hash": list_hash(names),
        "splits": {s: len(splits[s]) for s in SPLIT_NAMES},
    })
    log.info("wrote %d images, %d captions and a %s split under %s", num_images, len(lines),
             "/".join(str(len(splits[s])) for s in SPLIT_NAMES), out)
    return True


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """An RGB PNG of width x height black pixels (a 10000 x 10000 one is ~0.3 MB), written without
    ever holding its pixels: the rows are compressed in identical blocks, each ending in a full
    flush (the compressor starts afresh, so every block compresses to the same bytes)."""
    row = b"\x00" * (1 + 3 * width)  # filter byte + pixels
    per_block = max(1, min(height, (4 << 20) // len(row)))
    blocks, rest = divmod(height, per_block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and checksum are added here
    block = comp.compress(row * per_block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(row * rest) + comp.flush()
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(row * per_block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path

"""Procedural street scenes: the embedded dataset behind `make demo` and the tests.

Like a real driving dataset, both the location prior (sky on top, road at the bottom
centre) and the image content carry information, so a model that reads the image beats
the analytic prior, and a model that cannot see the image lands on it.

Two styles share one scene geometry (the same seed gives the same masks, hence the same
prior):

- `colour`: every class has its own colour. A model learns content within 100 steps;
  fast tests and `make demo` use it.
- `texture`: every class is a grey texture of its own grain (spatial frequency and
  orientation), drawn with one brightness law for all classes. Content is learnable but
  slow, as with real photos: at first a model learns mostly the location prior.
  `content` (0..1) scales how strongly a class's texture stands out from a grain shared
  by every class: 1 is the hard dataset, about 0.1 leaves content aligned but nearly
  absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segaudit.core.errors import DataError

CLASS_NAMES = ["road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole"]
CLASS_COLORS = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [107, 142, 35],
    [70, 130, 180],
    [0, 0, 142],
    [220, 20, 60],
    [153, 153, 153],
]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(8)
IGNORE_INDEX = 255
STYLES = ("colour", "texture")

# The texture style's grain per class: (period in pixels at 64 px, orientation in degrees;
# None = isotropic). Periods and angles pair up so that no single cue (frequency alone,
# orientation alone) separates every class.
CLASS_GRAIN = [(3.0, None), (6.0, 45.0), (6.0, 0.0), (9.0, None), (12.0, 90.0), (4.0, 90.0), (4.0, 0.0), (3.0, 135.0)]


def check_style(style: str, content: float) -> dict:
    """`{"style", "content"}` if both are usable (a one-line DataError if not)."""
    if style not in STYLES:
        raise DataError(f"style '{style}': choose one of {', '.join(STYLES)}")
    if isinstance(content, bool) or not isinstance(content, (int, float)) or not 0.0 <= float(content) <= 1.0:
        raise DataError(f"content {content!r}: expected a number in [0, 1]")
    return {"style": style, "content": float(content)}


@dataclass(frozen=True)
class SynthSpec:
    """What `write_synthetic` generates; equal specs give byte-identical folders."""

    n_train: int = 400
    n_val: int = 100
    size: int = 64
    seed: int = 0
    n_test: int = 0  # a labelled test split (validate's generalization gate)
    style: str = "colour"  # colour | texture (see the module docstring)
    content: float = 1.0  # texture style: how strongly class textures stand out (0..1)
    distinct: tuple[str, ...] | None = None  # texture style: the classes that stand out (None: all)

    def __post_init__(self) -> None:
        check_style(self.style, self.content)
        unknown = sorted(set(self.distinct or ()) - set(CLASS_NAMES))
        if unknown:
            raise DataError(f"distinct: {unknown[0]!r} is not a class (classes: {', '.join(CLASS_NAMES)})")

    def folder_name(self) -> str:
        test = f"-t{self.n_test}" if self.n_test else ""
        style = "" if self.style == "colour" else f"-{self.style}{self.content:g}"
        style += "" if self.distinct is None else "-only-" + "+".join(sorted(self.distinct))
        return f"synthetic-v1-n{self.n_train}-{self.n_val}{test}-s{self.size}-seed{self.seed}{style}"


def _texture(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: blocky noise upsampled, so surfaces look textured."""
    cells = max(2, int(max(h, w) / 6))
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    ys = np.linspace(0, cells - 1, h).astype(int)
    xs = np.linspace(0, cells - 1, w).astype(int)
    return coarse[np.ix_(ys, xs)] * scale


def _paint(img, mask, region, color, label, rng, texture=10.0):
    if not region.any():
        return
    noise = _texture(rng, *region.shape, texture)[..., None]
    img[region] = (np.asarray(color, np.float32)[None, :] + noise[region]).clip(0, 255)
    mask[region] = label


# One function, layer after layer, on purpose: the RNG draws happen in exactly this order,
# and the embedded scenes (and every number measured on them) stay byte-identical only
# while they do.
def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Args:
        rng: the only source of randomness (seeded by the caller).
        size: height and width in pixels.

    Returns:
        (image uint8 HxWx3, mask uint8 HxW with class ids and 255 for ignore).
    """
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    horizon = rng.uniform(0.3, 0.55) * h

    # Sky: a vertical blue gradient.
    top = np.array([55, 105, 195]) + rng.uniform(-15, 15, 3)
    low = np.array([175, 200, 235]) + rng.uniform(-15, 15, 3)
    t = (yy / max(horizon, 1.0)).clip(0, 1)[..., None]
    img[:] = top * (1 - t) + low * t
    mask[:] = SKY

    # Buildings standing on the horizon, with a darker window grid.
    for _ in range(rng.integers(2, 6)):
        x0 = rng.uniform(-0.1, 0.9) * w
        bw = rng.uniform(0.12, 0.35) * w
        btop = horizon - rng.uniform(0.12, 0.45) * h
        region = (xx >= x0) & (xx < x0 + bw) & (yy >= btop) & (yy < horizon + 1)
        base = rng.choice([[120, 110, 100], [150, 140, 125], [95, 95, 105], [160, 120, 95]])
        _paint(img, mask, region, base + rng.uniform(-12, 12, 3), BUILDING, rng, texture=6)
        period = max(3, int(rng.uniform(0.05, 0.09) * w))
        windows = region & ((xx - x0) % period < period / 2) & ((yy - btop) % period < period / 2)
        img[windows] *= 0.55

    # Trees: green blobs near the horizon.
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, w), horizon - rng.uniform(0.0, 0.12) * h
        rx, ry = rng.uniform(0.06, 0.16) * w, rng.uniform(0.08, 0.2) * h
        region = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        _paint(img, mask, region, [60, 125, 45] + rng.uniform(-15, 15, 3), VEGETATION, rng, 25)

    # Ground: grass, sidewalks and a road converging to a vanishing point.
    ground = yy >= horizon
    _paint(img, mask, ground, [85, 140, 60] + rng.uniform(-15, 15, 3), VEGETATION, rng, 25)
    depth = ((yy - horizon) / max(h - horizon, 1.0)).clip(0, 1)  # 0 at horizon, 1 at bottom
    vanish_x = rng.uniform(0.35, 0.65) * w
    bottom_x = vanish_x + rng.uniform(-0.2, 0.2) * w
    centre = vanish_x + (bottom_x - vanish_x) * depth
    half = 0.01 * w + depth * rng.uniform(0.3, 0.6) * w
    dist = np.abs(xx - centre)
    walk = ground & (dist >= half) & (dist < half * rng.uniform(1.25, 1.5))
    road = ground & (dist < half)
    _paint(img, mask, walk, [170, 160, 150] + rng.uniform(-10, 10, 3), SIDEWALK, rng, 8)
    _paint(img, mask, road, [95, 95, 100] + rng.uniform(-10, 10, 3), ROAD, rng, 6)
    dashes = road & (dist < np.maximum(0.5, 0.02 * depth * w)) & ((yy * 0.5).astype(int) % 3 == 0)
    img[dashes] = [230, 230, 220]

    # Objects, far to near so near ones occlude far ones.
    objects = [(CAR, n) for n in range(rng.integers(0, 4))]
    objects += [(PERSON, n) for n in range(rng.integers(0, 4))]
    objects += [(POLE, n) for n in range(rng.integers(0, 3))]
    placed = [(rng.uniform(horizon + 0.05 * h, h + 0.1 * h), kind) for kind, _ in objects]
    for foot, kind in sorted(placed):
        s = float(np.clip((foot - horizon) / max(h - horizon, 1.0), 0.1, 1.2))
        row = int(min(foot, h - 1))
        c, hw = centre[row, 0], half[row, 0]
        if kind == CAR:
            cw = s * 0.4 * w + 2
            ch = cw * 0.55
            cx = c + rng.uniform(-0.8, 0.8) * hw
            body = (np.abs(xx - cx) < cw / 2) & (yy > foot - ch) & (yy <= foot)
            color = rng.choice(
                [[200, 30, 30], [30, 60, 180], [230, 230, 230], [20, 20, 20], [200, 180, 40], [40, 130, 60]]
            )
            _paint(img, mask, body, color + rng.uniform(-20, 20, 3), CAR, rng, 5)
            glass = body & (yy < foot - ch * 0.6) & (np.abs(xx - cx) < cw * 0.35)
            img[glass] = [40, 50, 70]
            wheels = body & (yy > foot - ch * 0.2) & (np.abs(np.abs(xx - cx) - cw * 0.3) < cw * 0.1)
            img[wheels] = [15, 15, 15]
        elif kind == PERSON:
            ph = s * 0.45 * h + 3
            pw = max(1.5, ph * 0.28)
            side = rng.choice([-1.0, 1.0])
            px = c + side * hw * rng.uniform(1.0, 1.4)
            body = (np.abs(xx - px) < pw / 2) & (yy > foot - ph * 0.82) & (yy <= foot)
            head = ((xx - px) ** 2 + (yy - (foot - ph * 0.9)) ** 2) <= (pw * 0.45) ** 2
            clothes = rng.choice([[180, 40, 40], [40, 40, 160], [200, 160, 40], [30, 30, 30]])
            _paint(img, mask, body, clothes + rng.uniform(-20, 20, 3), PERSON, rng, 10)
            _paint(img, mask, head, [225, 180, 150], PERSON, rng, 5)
        else:
            pole_w = max(1.0, s * 0.035 * w)
            side = rng.choice([-1.0, 1.0])
            px = c + side * hw * rng.uniform(1.05, 1.6)
            region = (np.abs(xx - px) < pole_w / 2) & (yy > foot - s * 0.85 * h) & (yy <= foot)
            _paint(img, mask, region, [140, 140, 135] + rng.uniform(-10, 10, 3), POLE, rng, 4)

    # Ego-vehicle hood, labelled ignore as in Cityscapes.
    if rng.uniform() < 0.5:
        hood = yy >= h * (1 - rng.uniform(0.04, 0.1))
        img[hood] = [35, 35, 40]
        mask[hood] = IGNORE_INDEX

    # Global lighting and sensor noise.
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-15, 15)
    img = img + rng.normal(0, 4, img.shape)
    return img.clip(0, 255).astype(np.uint8), mask


def _grain(rng: np.random.Generator, shape: tuple[int, int], period: float, angle: float | None) -> np.ndarray:
    """Band-pass filtered white noise (unit std): a texture of one grain, like a surface
    photographed rather than painted. The pass band is centred on 1/`period` cycles per
    pixel and, with an `angle`, on that orientation (of the stripes' normal)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    radius = np.hypot(fx, fy)
    centre = 1.0 / period
    gain = np.exp(-0.5 * ((radius - centre) / (0.25 * centre)) ** 2)
    if angle is not None:
        theta = np.deg2rad(angle)
        along = np.abs(fx * np.cos(theta) + fy * np.sin(theta)) / np.maximum(radius, 1e-9)
        gain *= along**8  # energy near the normal's direction only
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=shape)) * gain).real
    return (field / max(field.std(), 1e-9)).astype(np.float32)


def render_texture_image(
    rng: np.random.Generator, mask: np.ndarray, content: float, distinct: tuple[str, ...] | None = None
) -> np.ndarray:
    """A grey image for `mask` in the texture style.

    The image is one brightness (uniform 70..185) and one grain shared by every class;
    `content` mixes in what tells the classes apart: each class region's own brightness
    offset (one law for all classes: uniform -55..55 per region and image) and its
    class-specific grain (`CLASS_GRAIN`, periods jittered by 15% and angles by 15 degrees
    per image). Then the same lighting gradient, global tint and sensor noise everywhere.
    At `content` 0 the image says nothing about the mask; colour never does. With
    `distinct` only those classes stand out; every other class wears the shared grain and
    brightness, so the image tells them apart from nothing.
    """
    scale = mask.shape[0] / 64.0  # periods are stated for 64 px high scenes
    img = np.full(mask.shape, rng.uniform(70, 185), np.float32)
    shared = _grain(rng, mask.shape, float(rng.uniform(3.0, 12.0)) * scale, None)
    img += 28.0 * (1.0 - content) * shared
    for label, (period, angle) in enumerate(CLASS_GRAIN):
        offset = rng.uniform(-55, 55)
        jitter_period = period * scale * rng.uniform(0.85, 1.15)
        jitter_angle = None if angle is None else angle + rng.uniform(-15, 15)
        grain = _grain(rng, mask.shape, jitter_period, jitter_angle)
        region = mask == label
        if distinct is not None and CLASS_NAMES[label] not in distinct:
            continue  # the draws above still happen: every class keeps its random stream
        img[region] += content * (offset + 28.0 * grain[region])
    img[mask == IGNORE_INDEX] = 40.0
    yy = np.linspace(-1, 1, mask.shape[0], dtype=np.float32)[:, None]
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20) * yy + rng.uniform(-10, 10)
    img = img[..., None] + rng.uniform(-6, 6, 3).astype(np.float32)  # a global tint, same for all classes
    img = img + rng.normal(0, 4, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def render_styled(spec: SynthSpec, split_id: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of a split in `spec`'s style; the mask does not depend on the style."""
    image, mask = render_scene(np.random.default_rng([spec.seed, split_id, index]), spec.size)
    if spec.style == "texture":
        image = render_texture_image(
            np.random.default_rng([spec.seed, split_id, index, 1]),
            mask,
            float(spec.content),
            None if spec.distinct is None else tuple(spec.distinct),
        )
    return image, mask


def write_synthetic(out: Path, spec: SynthSpec) -> Path:
    """Write the dataset in the folder layout `dataset=folder` reads.

    Layout: `out/images/{train,val,test}/<stem>.png`, `out/masks/{train,val,test}/<stem>.png`
    (test only when `n_test > 0`) and `out/dataset.yaml`. Every scene draws from its own
    seeded generator, so the same spec always gives byte-identical files, and adding a
    test split leaves the train and val files unchanged.
    """
    out = Path(out)
    splits = [("train", spec.n_train), ("val", spec.n_val), ("test", spec.n_test)]
    for split_id, (split, count) in enumerate(splits):
        if count == 0:
            continue
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = render_styled(spec, split_id, i)
            stem = f"{split}_{i:05d}"
            Image.fromarray(image).save(out / "images" / split / f"{stem}.png")
            Image.fromarray(mask).save(out / "masks" / split / f"{stem}.png")
    meta = {
        "name": "synthetic",
        "num_classes": len(CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "class_colors": CLASS_COLORS,
        "ignore_index": IGNORE_INDEX,
        "generator": {
            "n_train": spec.n_train,
            "n_val": spec.n_val,
            "n_test": spec.n_test,
            "size": spec.size,
            "seed": spec.seed,
            "style": spec.style,
            "content": spec.content,
            "distinct": None if spec.distinct is None else list(spec.distinct),
        },
    }
    (out / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return out


def ensure_synthetic(cache_dir: Path, spec: SynthSpec) -> Path:
    """Return the cached folder for `spec`, generating it once.

    Generation happens in a temporary sibling folder that is renamed into place, so
    parallel runs never see a half-written dataset.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / spec.folder_name()
    if (target / "dataset.yaml").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
    try:
        write_synthetic(tmp, spec)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# The synthetic classes as Cityscapes label ids (road 7, sidewalk 8, building 11,
# vegetation 21, sky 23, car 26, person 24, pole 17); ignore (the hood) becomes 0.
CITYSCAPES_LABEL_IDS = np.zeros(256, np.uint8)
CITYSCAPES_LABEL_IDS[: len(CLASS_NAMES)] = [7, 8, 11, 21, 23, 26, 24, 17]


def render_scene_at(
    seed: int, height: int, width: int, base: int = 64, style: str = "colour", content: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One scene at any (height, width): rendered at `base` px, then resized (bilinear
    image, nearest mask), so a 1024x2048 scene costs a resize, not a large render.
    Sensor noise is added at full size, so the files compress and decode like photos
    rather than like smooth upscaled drawings. The texture style draws its grains at
    full size, on the resized mask."""
    rng = np.random.default_rng(seed)
    image, mask = render_scene(rng, base)
    mask = np.array(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    if style == "texture":
        return render_texture_image(rng, mask, content), mask
    image = np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)
    image += rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8), mask


def write_cityscapes_layout(
    root: Path,
    per_split: dict[str, int],
    height: int = 1024,
    width: int = 2048,
    seed: int = 0,
    spec: SynthSpec | None = None,
) -> Path:
    """Scenes in Cityscapes' official layout and size, with raw `*_gtFine_labelIds.png`
    (34-id space), for trying the `cityscapes` preset, its tests and benchmarks.

    `per_split` maps a split name to its number of frames; frames alternate between two
    city folders, as in the real dataset. `spec` gives the style (its counts and size
    are not used).
    """
    style, content = (spec.style, float(spec.content)) if spec is not None else ("colour", 1.0)
    for split, count in per_split.items():
        for i in range(count):
            city = ("aachen", "bremen")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            image, mask = render_scene_at(
                zlib.crc32(f"{seed}/{split}/{i}".encode()), height, width, style=style, content=content
            )
            images, masks = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(CITYSCAPES_LABEL_IDS[mask]).save(masks / f"{stem}_gtFine_labelIds.png")
    return root

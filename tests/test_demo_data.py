"""The synthetic demo set (crossmodal.demo_data, make_demo_data.py): deterministic, complete, readable."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import make_demo_data
from crossmodal import demo_data
from crossmodal.captions import SPLIT_NAMES, load_splits, read_captions
from crossmodal.demo_data import DemoDataError, Shape, generate, image_name, make_scene

N = 40  # small: the whole module runs in about a second


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert generate(out, num_images=N, seed=3, progress=False) is True
    return out


def test_same_seed_gives_identical_bytes(demo, tmp_path):
    other = tmp_path / "again"
    generate(other, num_images=N, seed=3, progress=False)
    a, b = all_files(demo), all_files(other)
    assert list(a) == list(b)
    assert len([k for k in a if k.startswith("images/")]) == N
    assert a == b
    assert not [k for k in a if k.endswith(".tmp")]  # no temporary files left behind


def test_identical_bytes_across_processes(demo, tmp_path):
    # A fresh interpreter (other hash seed, cold imports) through the CLI gives the same bytes.
    out = tmp_path / "proc"
    root = Path(make_demo_data.__file__).resolve().parent
    subprocess.run([sys.executable, str(root / "make_demo_data.py"), "--out", str(out), "--num-images",
                    str(N), "--seed", "3", "--no-progress"], check=True, cwd=tmp_path, capture_output=True)
    assert all_files(out) == all_files(demo)


@pytest.mark.parametrize("kind", demo_data.SHAPES)
def test_large_shapes_stay_inside_their_half(kind):
    # Worst case over many jitter/radius draws: never clipped by the border, never across the middle.
    size = 128
    for position in demo_data.POSITIONS:
        for trial in range(30):
            mask = Image.new("L", (size, size), 0)
            rng = np.random.default_rng(trial)
            demo_data._draw_shape(ImageDraw.Draw(mask), Shape(kind, "red", "large", position), size, rng)
            ys, xs = np.nonzero(np.asarray(mask))
            assert xs.min() > 0 and ys.min() > 0 and xs.max() < size - 1 and ys.max() < size - 1
            half = {"left": xs.max() < size // 2, "right": xs.min() >= size // 2,
                    "top": ys.max() < size // 2, "bottom": ys.min() >= size // 2, "centre": True}
            assert half[position], (kind, position, trial)


def test_other_seed_differs(demo, tmp_path):
    other = tmp_path / "seed4"
    generate(other, num_images=N, seed=4, progress=False)
    assert (other / "captions.token").read_bytes() != (demo / "captions.token").read_bytes()
    assert (other / "images" / image_name(0)).read_bytes() != (demo / "images" / image_name(0)).read_bytes()


def test_captions_parse_five_distinct_per_image(demo):
    cs = read_captions(demo / "captions.token")
    names = [image_name(i) for i in range(N)]
    assert cs.images == names
    assert sorted(os.listdir(demo / "images")) == names
    assert len(cs.captions) == 5 * N
    for name in names:
        caps = [c for c in cs.captions if c.image == name]
        assert [c.number for c in caps] == [0, 1, 2, 3, 4]
        texts = [c.text for c in caps]
        assert len(set(texts)) == 5, texts
        for t in texts:
            assert t[0].isupper() and t.endswith(" ."), t
    raw = (demo / "captions.token").read_text(encoding="utf-8")
    assert re.match(r"^demo_00000\.jpg#0\t\S", raw)


def test_single_words_are_faithful_queries(demo):
    # "circle" and a colour word only appear in captions of images that show them.
    cs = read_captions(demo / "captions.token")
    for i in range(N):
        scene = make_scene(3, i)
        texts = " ".join(c.text for c in cs.captions if c.image == image_name(i)).lower()
        words = set(re.findall(r"[a-z]+", texts))
        assert ("circle" in words) <= any(s.kind == "circle" for s in scene.shapes), texts
        for s in scene.shapes:
            assert s.color in words, (s, texts)
        bg_colors = {scene.background.color, scene.background.color2}
        allowed = {s.color for s in scene.shapes} | bg_colors
        colour_words = words & (set(demo_data.COLORS) | set(demo_data.BG_EXTRA_COLORS))
        assert colour_words <= allowed, texts


def test_splits_cover_all_images_without_overlap(demo):
    cs = read_captions(demo / "captions.token")
    splits = load_splits(cs, demo / "splits")  # reads the written lists, makes none
    assert set(splits) == set(SPLIT_NAMES)
    assert [len(splits[s]) for s in SPLIT_NAMES] == [32, 4, 4]
    union = [n for s in SPLIT_NAMES for n in splits[s]]
    assert sorted(union) == cs.images and len(set(union)) == len(union)


def test_image_size_and_mode(demo, tmp_path):
    for name in (image_name(0), image_name(N - 1)):
        with Image.open(demo / "images" / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (128, 128)
    generate(tmp_path / "small", num_images=2, image_size=64, progress=False)
    with Image.open(tmp_path / "small" / "images" / image_name(1)) as im:
        assert im.size == (64, 64)


def test_rerun_is_noop_unless_force(tmp_path, caplog):
    out = tmp_path / "d"
    assert generate(out, num_images=10, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with caplog.at_level("INFO"):
        assert generate(out, num_images=10, progress=False) is False
    assert "nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert generate(out, num_images=10, force=True, progress=False) is True


def test_incomplete_output_is_remade(tmp_path):
    out = tmp_path / "d"
    generate(out, num_images=10, progress=False)
    before = all_files(out)
    (out / "images" / image_name(4)).unlink()  # e.g. deleted by hand
    assert generate(out, num_images=10, progress=False) is True
    assert all_files(out) == before
    (out / "demo_manifest.json").unlink()  # e.g. a run killed before the end
    assert generate(out, num_images=10, progress=False) is True
    assert all_files(out) == before


def test_new_args_regenerate_and_drop_stale_images(tmp_path):
    out = tmp_path / "d"
    generate(out, num_images=12, progress=False)
    first = (out / "images" / image_name(3)).read_bytes()
    assert generate(out, num_images=6, progress=False) is True
    assert sorted(os.listdir(out / "images")) == [image_name(i) for i in range(6)]
    assert (out / "images" / image_name(3)).read_bytes() == first  # image i depends on (seed, i) only
    assert len(read_captions(out / "captions.token").images) == 6


def test_refuses_foreign_folder_and_bad_counts(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DemoDataError, match="not a demo set"):
        generate(tmp_path, num_images=3, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DemoDataError, match="not a folder"):
        generate(tmp_path / "afile", num_images=3, force=True, progress=False)
    with pytest.raises(DemoDataError, match="--num-images"):
        generate(tmp_path / "x", num_images=0, progress=False)


def test_cli_help_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        make_demo_data.main(["--help"])
    assert e.value.code == 0
    assert "--num-images" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert make_demo_data.main(["--out", str(out), "--num-images", "5", "--seed", "1", "--no-progress"]) == 0
    assert (out / "demo_manifest.json").is_file()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "a.txt").write_text("x")
    assert make_demo_data.main(["--out", str(tmp_path / "foreign"), "--num-images", "2", "--no-progress"]) == 2

"""Caption files, split lists and the seeded split (captions.py)."""
from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from crossmodal import captions
from crossmodal.captions import (
    DatasetError,
    load_splits,
    make_seeded_split,
    missing_images,
    read_captions,
    read_image_list,
)


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def write(path, text: str):
    path.write_text(text, encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------------------------------
# caption files

def test_read_captions_good_file_crlf_bom_blank_lines_whitespace(tmp_path):
    body = (
        "a.jpg#0\tA dog  runs \u3000 fast .\r\n"
        "\r\n"
        "   \r\n"
        "a.jpg#1\t  Two dogs   play.  \r\n"
        "b.jpg#0\tA cat.\r\n"
        "a.jpg#2\tThird caption of a\r\n"
        "\n"
        "c.jpg#0\tLast line without newline"
    )
    path = write_bytes(tmp_path / "caps.token", b"\xef\xbb\xbf" + body.encode("utf-8"))
    cs = read_captions(path)
    assert [(c.image, c.number, c.text) for c in cs.captions] == [
        ("a.jpg", 0, "A dog runs fast ."),  # runs of (any) whitespace collapse to one space
        ("a.jpg", 1, "Two dogs play."),
        ("b.jpg", 0, "A cat."),
        ("a.jpg", 2, "Third caption of a"),
        ("c.jpg", 0, "Last line without newline"),
    ]
    assert cs.images == ["a.jpg", "b.jpg", "c.jpg"]  # first-seen order, BOM not part of the name
    assert cs.texts[2] == "A cat."
    sub = cs.subset(["c.jpg", "a.jpg"])
    assert [c.image for c in sub.captions] == ["a.jpg", "a.jpg", "a.jpg", "c.jpg"]
    assert sub.images == ["a.jpg", "c.jpg"]


def test_read_captions_names_with_folders_spaces_and_unicode(tmp_path):
    path = write(tmp_path / "caps.txt", "x y.jpg#3\tA caption\nsub dir/ça va.jpg#0\tAnother\n")
    cs = read_captions(str(path))  # str paths work too
    assert [(c.image, c.number) for c in cs.captions] == [("x y.jpg", 3), ("sub dir/ça va.jpg", 0)]


@pytest.mark.parametrize(
    "bad_line, what",
    [
        ("a.jpg#1 no tab here", "expected"),
        ("a.jpg\tno number", "expected"),
        ("a.jpg#x\tnot a number", "expected"),
        ("a.jpg#1\t", "empty caption"),
        ("a.jpg#1\t   \u3000  ", "empty caption"),
        ("a.jpg#0\tsame key again", "duplicate"),
    ],
)
def test_read_captions_malformed_line_names_file_and_line(tmp_path, bad_line, what):
    # the bad line is line 4 (after a blank line, which still counts)
    text = "a.jpg#0\tfirst\nb.jpg#0\tsecond\n\n" + bad_line + "\nc.jpg#0\tafter\n"
    path = write(tmp_path / "bad.token", text)
    with pytest.raises(DatasetError) as info:
        read_captions(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"{path}:4:" in msg
    assert what in msg


def test_read_captions_malformed_line_number_with_crlf_and_bom(tmp_path):
    body = "a.jpg#0\tfirst\r\nb.jpg#0\tsecond\r\nbroken line\r\n"
    path = write_bytes(tmp_path / "bad.token", b"\xef\xbb\xbf" + body.encode())
    with pytest.raises(DatasetError, match=r":3: expected"):
        read_captions(path)


def test_read_captions_duplicate_key_names_first_line(tmp_path):
    path = write(tmp_path / "dup.token", "a.jpg#0\tx\nb.jpg#0\ty\na.jpg#0\tz\n")
    with pytest.raises(DatasetError) as info:
        read_captions(path)
    assert f"{path}:3:" in str(info.value) and "first on line 1" in str(info.value)


def test_read_captions_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_captions(tmp_path / "nope.token")
    empty = write(tmp_path / "empty.token", "\n\n  \n")
    with pytest.raises(DatasetError) as info:
        read_captions(empty)
    assert str(empty) in str(info.value)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------------------------------
# image names and line contents (one validator for every file that names images)

GOOD_LINES = "a.jpg#0\tfirst\nb.jpg#0\tsecond\n"  # the bad line below is line 3


@pytest.mark.parametrize("bad_line, what", [
    ("../secret/private.jpg#0\tcap", "outside the images folder"),
    ("sub/../../private.jpg#0\tcap", "outside the images folder"),
    ("/etc/private.jpg#0\tcap", "outside the images folder"),
    ("C:/private.jpg#0\tcap", "outside the images folder"),
    ("c:private.jpg#0\tcap", "outside the images folder"),
    ("..\\private.jpg#0\tcap", "outside the images folder"),
    ("\\\\server\\share.jpg#0\tcap", "outside the images folder"),
    ("sub\\a.jpg#0\tcap", "backslash"),
    ("sub//a.jpg#0\tcap", "empty or '.' part"),
    ("./a.jpg#0\tcap", "empty or '.' part"),
    ("sub/#0\tcap", "empty or '.' part"),
    ("#0\tcap", "empty image name"),
    ("a.jpg #0\tcap", "trailing whitespace"),
    (" a.jpg#0\tcap", "leading or trailing whitespace"),
    ("a.jpg\u00a0#0\tcap", "leading or trailing whitespace"),
    ("a.jpg#0\tcap\textra column", "3 tab-separated columns"),
    ("a.jpg#0\tcap\t", "3 tab-separated columns"),
    ("c.jpg#0\tcap\x00tail", "NUL"),
    ("c\x00.jpg#0\tcap", "NUL"),
    ("c.jpg#0\tcap\x1btail", "U+001B"),
    ("c.jpg#0\tcap\x7f", "U+007F"),
    ("c\x85.jpg#0\tcap", "U+0085"),
    ("c.jpg#0\tcap\rtail", "carriage return"),
    ("\ufeffc.jpg#0\tcap", "byte-order mark"),
    ("c.jpg#0\tcap\ufeff", "byte-order mark"),
    ("c\u200b.jpg#0\tcap", "zero width space"),
    ("c\u202e.jpg#0\tcap", "U+202E"),
    ("c\u2028.jpg#0\tcap", "U+2028"),
    ("a#1.jpg#0\tcap", "'#'"),
    ("a::b.jpg#0\tcap", "'::'"),
    ("c.jpg#\u0663\tcap", "expected"),  # an Arabic-Indic digit: int() would take it
])
def test_read_captions_refuses_bad_names_and_characters_naming_file_and_line(tmp_path, bad_line, what):
    path = write(tmp_path / "caps.token", GOOD_LINES + bad_line + "\nd.jpg#0\tafter\n")
    with pytest.raises(DatasetError) as info:
        read_captions(path)
    assert str(info.value).startswith(f"{path}:3: ") and what in str(info.value), str(info.value)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = write_bytes(tmp_path / "latin1.token", b"a.jpg#0\tfirst\n\nb.jpg#0\tcaf\xe9 au lait\n")
    with pytest.raises(DatasetError, match=r"latin1\.token:3: not UTF-8 text \(byte 0xe9 at byte 12 of the line\)"):
        read_captions(path)
    split = write_bytes(tmp_path / "train.txt", b"a.jpg\n\xff.jpg\n")
    with pytest.raises(DatasetError, match=r"train\.txt:2: not UTF-8"):
        read_image_list(split)


def test_the_first_bad_line_is_named(tmp_path):
    """A character refused on a later line does not hide a malformed earlier one, and vice versa."""
    path = write(tmp_path / "caps.token", "a.jpg#0\tok\nbroken\nb.jpg#0\tx\x00\n")
    with pytest.raises(DatasetError, match=r"caps\.token:2: expected"):
        read_captions(path)
    path = write(tmp_path / "caps.token", "a.jpg#0\tx\x00\nbroken\n")
    with pytest.raises(DatasetError, match=r"caps\.token:1: a NUL"):
        read_captions(path)


@pytest.mark.parametrize("bad_line, what", [
    ("../secret/private.jpg", "outside the images folder"),
    ("/abs/c.jpg", "outside the images folder"),
    ("c.jpg ", "trailing whitespace"),
    ("  c.jpg", "leading or trailing whitespace"),
    ("c.jpg\tcaption", "a tab"),
    ("c.jpg#0", "'#'"),
    ("\ufeffc.jpg", "byte-order mark"),
    ("c\x00.jpg", "NUL"),
])
def test_read_image_list_refuses_bad_names(tmp_path, bad_line, what):
    path = write(tmp_path / "test.txt", "a.jpg\nb.jpg\n" + bad_line + "\n")
    with pytest.raises(DatasetError) as info:
        read_image_list(path)
    assert str(info.value).startswith(f"{path}:3: ") and what in str(info.value), str(info.value)


def test_image_name_rules():
    for good in ("a.jpg", "x y.jpg", "sub/dir/a.jpg", "ça.JPEG", "a..b.jpg", "..a.jpg", "ab:c.jpg", "1000092795.jpg"):
        assert captions.image_name_problem(good) is None, good
        assert not captions.escapes_folder(good), good
    for escaping in ("../a.jpg", "a/../../b", "..", "/a.jpg", "\\a.jpg", "C:a.jpg", "a:b.jpg", "z:/a", "a\\..\\..\\b"):
        assert captions.escapes_folder(escaping), escaping
        assert "outside the images folder" in captions.image_name_problem(escaping), escaping
    # inside the folder, yet not the one spelling of a path: refused in dataset files only
    for inside in ("a/./b.jpg", "a//b.jpg", "a/", "a\\b.jpg"):
        assert not captions.escapes_folder(inside) and captions.image_name_problem(inside), inside


# Caption lines built from pieces chosen to hit every rule often, mostly from path-like pieces
# (so that whole files parse often too); arbitrary text and bytes besides.
PATH_PIECES = ["a", "b.jpg", "x y", "ç", "é.png", "/", ".", "..", ":", "~", "C:", "\\"]
ODD_PIECES = [" ", "\u00a0", "#", "::", "\t", "\x00", "\x1f", "\ufeff", "\u200b", "\r", "\n", "\x85", "\x7f", "\u2028"]
path_names = st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=4).map("".join)
odd_names = st.lists(st.sampled_from(PATH_PIECES + ODD_PIECES) | st.text(max_size=3), max_size=5).map("".join)
numbers = st.sampled_from(["0", "1", "12", "007", "x", "", " 1", "\u0663"])
texts = st.lists(st.sampled_from(["a dog", " ", "\t", "\x00", "\ufeff", "\r", "ok"]) | st.text(max_size=6),
                 max_size=4).map("".join)


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate gives bytes that are not UTF-8


plain_lines = st.builds(lambda n, k, t: utf8(f"{n}#{k}\t{t}"), path_names, st.sampled_from(["0", "1", "23"]),
                        st.sampled_from(["a dog", "two  cats .", "ça"]))
odd_lines = st.builds(lambda n, k, t: utf8(f"{n}#{k}\t{t}"), odd_names, numbers, texts)
any_lines = (plain_lines | plain_lines | plain_lines | odd_lines | st.text(max_size=30).map(utf8)
             | st.binary(max_size=20))
files = st.builds(lambda bom, lines: (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + end for line, end in lines),
                  st.booleans(), st.lists(st.tuples(any_lines, st.sampled_from([b"\n", b"\r\n", b""])), max_size=6))


def parse_error_line(path, data: bytes) -> int | None:
    """The line a DatasetError names for ``data`` as a caption file (0: a file-level error), else None."""
    path.write_bytes(data)
    try:
        read_captions(path)
    except DatasetError as err:
        msg = str(err)
        if msg == f"{path}: no captions found":
            return 0
        assert msg.startswith(f"{path}:"), msg
        return int(msg[len(f"{path}:"):].split(":", 1)[0])
    return None


@settings(max_examples=300, deadline=None)
@given(data=files)
def test_any_caption_file_parses_to_names_inside_the_folder_or_names_the_first_bad_line(tmp_path_factory, data):
    work = tmp_path_factory.getbasetemp() / "fuzz"
    work.mkdir(exist_ok=True)
    path, images = work / "caps.token", work / "images"
    lines = data.split(b"\n")
    try:
        path.write_bytes(data)
        parsed = read_captions(path)
    except DatasetError as err:
        line = parse_error_line(path, data)
        assert line is not None and str(path) in str(err)
        event("refused")
        if line == 0:  # only blank lines
            # blank as the parser sees it: Unicode whitespace (a no-break space too)
            assert all(not x.strip() for x in data.decode("utf-8-sig").split("\n"))
            return
        assert 1 <= line <= len(lines)
        # the named line is the first bad one: the lines before it are fine, and it is bad with them
        assert parse_error_line(path, b"\n".join(lines[: line - 1]) + b"\n") in (None, 0)
        assert parse_error_line(path, b"\n".join(lines[:line])) == line
        return
    event("parsed" if parsed.captions else "parsed, empty")
    assert len(parsed.captions) == sum(1 for x in data.decode("utf-8-sig").split("\n") if x.strip())
    for cap in parsed.captions:
        joined = os.path.normpath(os.path.join(images, cap.image))
        assert joined.startswith(str(images) + os.sep), cap.image  # inside the folder, lexically
        assert Path(joined).relative_to(images).as_posix() == cap.image  # and the name is its path
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in cap.image), cap
        # a caption may hold format characters (joiners in emoji, direction marks), but no control
        # character or byte-order mark
        assert not any(unicodedata.category(c) == "Cc" or c == "\ufeff" for c in cap.text), cap
        path.write_text(f"{cap.key}\t{cap.text}\n", encoding="utf-8")  # written back, read the same
        assert read_captions(path).captions == [cap]


# --------------------------------------------------------------------------------------------------
# split lists

def captions_for(tmp_path, images, per_image=2):
    lines = [f"{im}#{n}\tcaption {n} of {im}" for im in images for n in range(per_image)]
    return read_captions(write(tmp_path / "caps.token", "\n".join(lines) + "\n"))


IMAGES = [f"{i:03d}.jpg" for i in range(10)]


def test_read_image_list_blank_lines_crlf_and_errors(tmp_path):
    path = write_bytes(tmp_path / "train.txt", b"\xef\xbb\xbfa.jpg\r\n\r\n  \r\nb.jpg\r\nc.jpg")
    assert read_image_list(path) == ["a.jpg", "b.jpg", "c.jpg"]
    dup = write(tmp_path / "dup.txt", "a.jpg\nb.jpg\na.jpg\n")
    with pytest.raises(DatasetError) as info:
        read_image_list(dup)
    assert f"{dup}:3:" in str(info.value) and "line 1" in str(info.value)
    tab = write(tmp_path / "tab.txt", "a.jpg\nb.jpg#0\tcaption\n")
    with pytest.raises(DatasetError, match=r"tab\.txt:2:"):
        read_image_list(tab)


@pytest.mark.parametrize("val_name", ["val.txt", "dev.txt"])
def test_load_splits_reads_lists(tmp_path, val_name):
    cs = captions_for(tmp_path, IMAGES)
    d = tmp_path / "splits"
    d.mkdir()
    write(d / "train.txt", "\n".join(IMAGES[:6]) + "\n")
    write(d / val_name, "\n".join(IMAGES[6:8]) + "\n\n")
    write(d / "test.txt", "\r\n".join(IMAGES[8:]))
    splits = load_splits(cs, d)
    assert splits == {"train": IMAGES[:6], "val": IMAGES[6:8], "test": IMAGES[8:]}
    assert sorted(p.name for p in d.iterdir()) == sorted(["train.txt", val_name, "test.txt"])  # nothing written


def test_val_txt_preferred_over_dev_txt(tmp_path):
    cs = captions_for(tmp_path, IMAGES)
    d = tmp_path / "splits"
    d.mkdir()
    write(d / "train.txt", "\n".join(IMAGES[:6]))
    write(d / "val.txt", IMAGES[6])
    write(d / "dev.txt", IMAGES[7])
    write(d / "test.txt", "\n".join(IMAGES[8:]))
    assert captions.find_split_files(d)["val"].name == "val.txt"
    assert load_splits(cs, d)["val"] == [IMAGES[6]]


def test_load_splits_partial_lists_fill_missing_splits(tmp_path):
    cs = captions_for(tmp_path, IMAGES)
    d = tmp_path / "splits"
    d.mkdir()
    write(d / "test.txt", "\n".join(IMAGES[:3]))
    assert load_splits(cs, d) == {"train": [], "val": [], "test": IMAGES[:3]}


def test_unknown_image_in_split_list_names_file(tmp_path):
    cs = captions_for(tmp_path, IMAGES)
    d = tmp_path / "splits"
    d.mkdir()
    write(d / "train.txt", "\n".join(IMAGES[:6]))
    bad = write(d / "test.txt", "\n".join(IMAGES[8:] + ["stranger.jpg"]))
    with pytest.raises(DatasetError) as info:
        load_splits(cs, d)
    assert str(bad) in str(info.value) and "stranger.jpg" in str(info.value)


def test_image_in_two_splits_names_file(tmp_path):
    cs = captions_for(tmp_path, IMAGES)
    d = tmp_path / "splits"
    d.mkdir()
    write(d / "train.txt", "\n".join(IMAGES[:6]))
    write(d / "dev.txt", "\n".join(IMAGES[6:8]))
    test_file = write(d / "test.txt", "\n".join(IMAGES[8:] + [IMAGES[0]]))
    with pytest.raises(DatasetError) as info:
        load_splits(cs, d)
    msg = str(info.value)
    assert str(test_file) in msg and IMAGES[0] in msg and "train" in msg


def test_karpathy_split_file_is_a_splits_source(tmp_path):
    import json

    cs = captions_for(tmp_path, IMAGES)
    kinds = ["train"] * 4 + ["restval"] * 2 + ["val"] * 2 + ["test"] * (len(IMAGES) - 8)
    karpathy = tmp_path / "dataset_flickr30k.json"
    images = [{"filename": n, "split": k, "sentences": [{"raw": "a dog"}]} for n, k in zip(IMAGES, kinds)]
    karpathy.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    assert load_splits(cs, karpathy) == {"train": IMAGES[:6], "val": IMAGES[6:8], "test": IMAGES[8:]}
    karpathy.write_text(json.dumps({"images": images + [{"filename": "stranger.jpg", "split": "test"}]}))
    with pytest.raises(DatasetError, match="dataset_flickr30k.json: 1 image.*stranger.jpg"):
        load_splits(cs, karpathy)
    karpathy.write_text(json.dumps({"images": [{"filename": IMAGES[0], "split": "holdout"}]}))
    with pytest.raises(DatasetError, match="unknown split names \\['holdout'\\]"):
        load_splits(cs, karpathy)
    karpathy.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="not a Karpathy split file"):
        load_splits(cs, karpathy)


# --------------------------------------------------------------------------------------------------
# seeded split

MANY = [f"img_{i:05d}.jpg" for i in range(1000)]


def test_seeded_split_deterministic_disjoint_covering():
    a = make_seeded_split(MANY, seed=3)
    b = make_seeded_split(list(reversed(MANY)), seed=3)  # input order does not matter
    assert a == b
    assert set(a) == {"train", "val", "test"}
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert sets[0] | sets[1] | sets[2] == set(MANY)
    assert sum(map(len, a.values())) == len(MANY)
    assert all(v == sorted(v) for v in a.values())
    assert make_seeded_split(MANY, seed=4) != a


def test_seeded_split_proportions():
    s = make_seeded_split(MANY, seed=0)
    n = len(MANY)
    for k in ("val", "test"):
        assert abs(len(s[k]) - n * captions.SPLIT_FRACTIONS[k]) <= 1
    custom = make_seeded_split(MANY, seed=0, fractions={"train": 0.8, "val": 0.1, "test": 0.1})
    assert [len(custom[k]) for k in ("train", "val", "test")] == [800, 100, 100]


def test_seeded_split_tiny_sets():
    s = make_seeded_split(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], seed=0)
    assert len(s["val"]) >= 1 and len(s["test"]) >= 1 and len(s["train"]) >= 1
    s2 = make_seeded_split(["a.jpg", "b.jpg"], seed=0)
    assert s2 == {"train": ["a.jpg", "b.jpg"], "val": [], "test": []}


def test_load_splits_writes_seeded_split_and_rereads_it(tmp_path, caplog):
    images = [f"{i:04d}.jpg" for i in range(60)]
    cs = captions_for(tmp_path, images)
    d = tmp_path / "work" / "splits"  # does not exist yet
    with caplog.at_level(logging.INFO, logger="crossmodal.captions"):
        first = load_splits(cs, d, seed=7)
    assert first == make_seeded_split(images, seed=7)
    assert sorted(p.name for p in d.iterdir()) == ["test.txt", "train.txt", "val.txt"]
    for k in ("train", "val", "test"):
        assert read_image_list(d / f"{k}.txt") == first[k]
    assert any("seeded split" in r.getMessage() for r in caplog.records)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    second = load_splits(cs, d, seed=99)  # lists exist now: the seed no longer matters
    assert second == first
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------
# missing images and list identity

def test_missing_images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for n in ("a.jpg", "c.jpg"):
        (d / n).write_bytes(b"x")
    assert missing_images(d, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]) == ["b.jpg", "d.jpg"]
    assert missing_images(d, ["a.jpg"]) == []
    assert missing_images(tmp_path / "nope", ["a.jpg", "b.jpg"]) == ["a.jpg", "b.jpg"]
    (d / "sub").mkdir()
    (d / "sub" / "e.jpg").write_bytes(b"x")
    assert missing_images(d, ["sub/e.jpg", "sub/f.jpg", "sub"]) == ["sub/f.jpg", "sub"]


def test_list_hash_order_sensitive_and_unambiguous():
    h = captions.list_hash(["a", "b"])
    assert h == captions.list_hash(["a", "b"]) and len(h) == 16
    assert h != captions.list_hash(["b", "a"])
    assert captions.list_hash(["ab"]) != captions.list_hash(["a", "b"])

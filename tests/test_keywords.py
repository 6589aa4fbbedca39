"""Keyword augmentation (crossmodal/keywords/, sentence_augment.py): one method, deterministic, with
no downloaded data and no network: the same captions give the same phrases on every machine."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmodal import keywords
from crossmodal.captions import Caption, CaptionSet, DatasetError
from crossmodal.keywords import (
    KeywordSample,
    augment_captions,
    extract_phrases,
    nouns_of,
    phrase_counts,
    read_keyword_samples,
    write_keyword_samples,
)

import config

FLICKR8K = SHARED_DATA / "flickr8k" / "flickr8k.token"


# --------------------------------------------------------------------------------------------------
# the one method

def test_the_method_needs_no_downloaded_data_and_is_the_same_in_a_fresh_process(tmp_path):
    """NLTK pointed at an empty data folder, and the network refused: the phrases of a fresh process
    are this process's, and the method is named with the versions that make it."""
    captions = ["Two dogs are running through the snow .", "A man in a red shirt climbs a rock .",
                "Children play with their toys on the leaves ."]
    code = ("import json, socket, sys\n"
            "socket.socket.connect = lambda *a: (_ for _ in ()).throw(OSError('no network'))\n"
            "from crossmodal.keywords import extract_phrases, method\n"
            "print(json.dumps([method(), [extract_phrases(c) for c in json.loads(sys.argv[1])]]))\n")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(captions)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"NLTK_DATA": str(tmp_path), "PATH": "/usr/bin:/bin",
                                                      "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    method, phrases = json.loads(out.stdout)
    assert phrases == [extract_phrases(c) for c in captions]
    assert method == keywords.method() and "LemmInflect" in method and "NLTK" in method
    assert phrases[2] == ["child", "play", "toy", "leaf"]


def test_lemmas():
    nouns = "dogs men women children feet teeth mice babies benches boxes shoes horses leaves skis labradors".split()
    assert [keywords.noun_lemma(w) for w in nouns] == \
        "dog man woman child foot tooth mouse baby bench box shoe horse leaf ski labrador".split()
    same = "people glasses jeans shorts grass bus tennis christmas lens graffiti miami".split()
    assert [keywords.noun_lemma(w) for w in same] == same
    verbs = "runs carries watches goes rides uses ran jumped stopped smiled".split()
    assert [keywords.verb_lemma(w) for w in verbs] == "run carry watch go ride use run jump stop smile".split()


# --------------------------------------------------------------------------------------------------
# phrases

def test_plural_nouns_and_verb():
    phrases = extract_phrases("Two dogs are running through the snow .")
    assert "dog" in phrases and "snow" in phrases and "dogs" not in phrases
    assert "running" in phrases  # -ing forms are kept as written (see crossmodal/keywords/phrases.py)
    assert not {"two", "are", "through", "the", "."} & set(phrases)


def test_adjective_noun_pair():
    phrases = extract_phrases("A black dog runs")
    assert phrases == ["black dog", "dog", "run"]


def test_lemmas_lower_case_no_stopwords_no_repeats():
    caption = "Two men are playing with a red ball . The men run with the ball ."
    phrases = extract_phrases(caption)
    assert "man" in phrases and "red ball" in phrases and "ball" in phrases and "playing" in phrases
    assert len(phrases) == len(set(phrases))
    for p in phrases:
        assert p == p.lower() and not set(p.split()) & keywords.SKIP_WORDS


def test_nouns_of():
    assert nouns_of("Two dogs are running through the snow .") == ["dog", "snow"]
    assert nouns_of("A black dog runs") == ["dog"]


def test_deterministic():
    caption = "A black dog runs on the grass ."
    assert extract_phrases(caption) == ["black dog", "dog", "run", "grass"]
    assert extract_phrases(caption) == extract_phrases(caption)


def test_rule_tagger_context():
    tagger = keywords.RuleTagger()

    def tags(text):
        return dict(tagger.tag(text.split()))

    t = tags("A little girl climbing into a wooden building")
    assert (t["little"], t["girl"], t["climbing"], t["wooden"], t["building"]) == ("JJ", "NN", "VBG", "JJ", "NN")
    assert tags("Dogs run in the snow")["run"] == "VBP"
    assert tags("A dog runs")["runs"] == "VBZ"
    assert tags("A boy in swim trunks jumps into the pool")["jumps"] == "VBZ"
    assert tags("Two soccer players")["players"] == "NNS"
    assert tags("A man is building a sandcastle")["building"] == "VBG"


def test_phrases():
    phrases = extract_phrases
    assert phrases("A man holds a tennis ball next to a parked car .") == \
        ["man", "hold", "tennis ball", "tennis", "ball", "parked car", "car"]
    assert phrases("A black and white dog jumps into a swimming pool .") == \
        ["black dog", "white dog", "dog", "jump", "swimming pool", "pool"]
    assert phrases("A woman wearing sunglasses stands in front of a lot of people .") == \
        ["woman", "sunglasses", "stand", "people"]
    assert phrases("Children play on the wet sand .") == ["child", "play", "wet sand", "sand"]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_clean_phrases(text):
    phrases = extract_phrases(text)
    assert len(phrases) == len(set(phrases))
    for p in phrases:
        assert re.fullmatch(r"[a-z]+(?:-[a-z]+)*(?: [a-z]+(?:-[a-z]+)*)?", p), p


@pytest.mark.skipif(not FLICKR8K.is_file(), reason="no flickr8k captions")
def test_real_captions():
    from crossmodal.captions import read_captions

    caps = read_captions(FLICKR8K).captions[:1000]
    phrases = [p for c in caps for p in extract_phrases(c.text)]
    assert len(phrases) > 4 * len(caps)
    assert not set(phrases) & (keywords.ENGLISH_STOPWORDS | keywords.CAPTION_STOPWORDS)
    assert {"dog", "man", "girl", "black dog", "running", "grass"} <= set(phrases)


# --------------------------------------------------------------------------------------------------
# samples and files

def test_augment_one_sample_per_image_phrase_from_first_caption():
    caps = CaptionSet([
        Caption("a.jpg", 0, "A black dog runs ."),
        Caption("a.jpg", 1, "A dog runs in the snow ."),
        Caption("b.jpg", 0, "A dog sleeps ."),
    ])
    seen = []
    samples = augment_captions(caps, progress=lambda it: (seen.append(c) or c for c in it))
    assert len(seen) == 3
    assert samples == augment_captions(caps)
    by = {(s.image, s.phrase): s.caption_key for s in samples}
    assert len(by) == len(samples)
    assert by["a.jpg", "dog"] == "a.jpg#0" and by["a.jpg", "snow"] == "a.jpg#1"
    assert by["b.jpg", "dog"] == "b.jpg#0"
    assert phrase_counts(samples)["dog"] == 2
    assert list(phrase_counts(samples))[0] == "dog"


def test_file_round_trip(tmp_path):
    samples = [KeywordSample("a.jpg", "a.jpg#0", "black dog"), KeywordSample("b.jpg", "b.jpg#3", "snow")]
    path = tmp_path / "kw" / "keywords.txt"
    assert write_keyword_samples(path, samples, method="rules: a note") == 2
    text = path.read_text()
    assert text.startswith("# image\tcaption\tphrase\n# keywords: rules: a note\n")
    assert "a.jpg\ta.jpg#0\tblack dog\n" in text
    assert read_keyword_samples(path) == samples
    assert [p.name for p in path.parent.iterdir()] == ["keywords.txt"]  # no temporary left behind


def test_write_rejects_a_tab_in_a_phrase(tmp_path):
    with pytest.raises(ValueError, match="tab"):
        write_keyword_samples(tmp_path / "kw.txt", [KeywordSample("a.jpg", "a.jpg#0", "bad\tphrase")])
    assert not (tmp_path / "kw.txt").exists()


@pytest.mark.parametrize("bad", [
    "a.jpg\ta.jpg#0",  # two fields
    "a.jpg\tb.jpg#0\tdog",  # caption of another image
    "a.jpg\ta.jpg\tdog",  # no caption number
    "a.jpg\ta.jpg#0\t ",  # empty phrase
    "a.jpg\ta.jpg#1\tdog",  # (image, phrase) repeated from line 2
    "../x.jpg\t../x.jpg#0\tdog",  # an image outside the images folder
    "b.jpg \tb.jpg #0\tdog",  # a trailing space in the image name
    "b.jpg\tb.jpg#0\tdog\tcat",  # a fourth column
    "b.jpg\tb.jpg#0\tdo\x00g",  # a NUL
    "\ufeffb.jpg\t\ufeffb.jpg#0\tdog",  # a byte-order mark mid-file
])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "kw.txt"
    path.write_text(f"# image\tcaption\tphrase\na.jpg\ta.jpg#0\tdog\n\n{bad}\n")
    with pytest.raises(DatasetError, match=r"kw\.txt:4: "):
        read_keyword_samples(path)


def test_missing_keyword_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_keyword_samples(tmp_path / "none.txt")


# --------------------------------------------------------------------------------------------------
# stage script

CAPTIONS = (
    "1000092795.jpg#0\tTwo dogs are running through the snow .\n"
    "1000092795.jpg#1\tA black dog runs in the snow .\n"
    "2000.jpg#0\tA man in a red shirt climbs a rock .\n"
)


def test_sentence_augment_end_to_end(tmp_path, caplog):
    import sentence_augment

    caps = tmp_path / "caps.token"
    caps.write_text(CAPTIONS)
    with caplog.at_level(logging.INFO):
        rc = sentence_augment.main(["--captions", str(caps), "--work-dir", str(tmp_path / "work")])
    assert rc == 0
    samples = read_keyword_samples(tmp_path / "work" / "keywords_augmented.txt")
    got = {(s.image, s.phrase): s.caption_key for s in samples}
    assert got["1000092795.jpg", "dog"] == "1000092795.jpg#0"
    assert got["1000092795.jpg", "black dog"] == "1000092795.jpg#1"
    assert ("2000.jpg", "red shirt") in got and ("2000.jpg", "climb") in got
    assert "3 captions" in caplog.text and f"{len(samples)} samples" in caplog.text
    assert "top phrases" in caplog.text and f"keywords: {keywords.method()}" in caplog.text
    written = (tmp_path / "work" / "keywords_augmented.txt").read_text().splitlines()[1]
    assert written == f"# keywords: {keywords.method()}"

    rc = sentence_augment.main(["--captions", str(caps), "--out", str(tmp_path / "o.txt")])
    assert rc == 0 and read_keyword_samples(tmp_path / "o.txt") == samples


def test_sentence_augment_default_path():
    from crossmodal.paths import Layout

    assert Layout(None, config.DATA_DIR).keywords_file == config.DATA_DIR / "flickr30k_keywords_augmented.txt"
    assert Layout(Path("/w")).keywords_file == Path("/w") / "keywords_augmented.txt"


def test_sentence_augment_bad_captions_exit_2(tmp_path, caplog):
    import sentence_augment

    caps = tmp_path / "caps.token"
    caps.write_text("1000092795.jpg#0\tA dog .\nno tab here\n")
    with caplog.at_level(logging.ERROR):
        rc = sentence_augment.main(["--captions", str(caps), "--out", str(tmp_path / "o.txt")])
    assert rc == 2 and not (tmp_path / "o.txt").exists()
    assert "caps.token:2" in caplog.text

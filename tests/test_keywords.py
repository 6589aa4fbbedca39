"""Keyword augmentation (crossmodal/keywords/, sentence_augment.py) on both methods, with no network.

The NLTK method runs for real on a private NLTK data folder: a tiny perceptron tagger trained here
and saved in NLTK's own format, a tiny stopword list and a tiny WordNet. The rule method runs with
NLTK pointed at an empty folder and downloads off. Debian's WordNet (/usr/share/wordnet) is
switched off for every test unless a test asks for it, so results do not depend on the machine.
"""
from __future__ import annotations

import logging
import random
import re
import socket
import time
from pathlib import Path

import nltk
import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmodal import keywords
from crossmodal.captions import Caption, CaptionSet, DatasetError
from crossmodal.keywords import (
    KeywordSample,
    augment_captions,
    extract_phrases,
    load_keyword_tools,
    nltk_data,
    nouns_of,
    phrase_counts,
    read_keyword_samples,
    write_keyword_samples,
)

import config

FLICKR8K = SHARED_DATA / "flickr8k" / "flickr8k.token"

TRAIN_SENTENCES = [
    "Two/CD dogs/NNS are/VBP running/VBG through/IN the/DT snow/NN ./.",
    "A/DT black/JJ dog/NN runs/VBZ",
    "A/DT black/JJ dog/NN runs/VBZ on/IN the/DT grass/NN ./.",
    "Two/CD men/NNS are/VBP playing/VBG with/IN a/DT red/JJ ball/NN ./. "
    "The/DT men/NNS run/VBP with/IN the/DT ball/NN ./.",
    "A/DT man/NN is/VBZ climbing/VBG a/DT rock/NN ./.",
    "The/DT white/JJ cat/NN sleeps/VBZ in/IN the/DT sun/NN ./.",
    "Dogs/NNS run/VBP in/IN the/DT snow/NN ./.",
]
TINY_STOPWORDS = "a an the are is in on through with to of and".split()


def _index(words: str, pos: str, first: int) -> str:
    # WordNet index line: lemma pos n_synsets n_pointers n_senses tagsense_count offset
    return "".join(f"{w} {pos} 1 0 1 0 {i:08d}\n" for i, w in enumerate(words.split(), start=first))


TINY_WORDNET = {  # the files Debian's wordnet-base has (no lexnames)
    "index.noun": _index("ball cat dog grass man rock snow sun", "n", 1),
    "index.verb": _index("climb play run sleep", "v", 20),
    "index.adj": _index("black red white", "a", 40),
    "index.adv": "",
    "data.adj": "", "noun.exc": "men man\n", "verb.exc": "ran run\n", "adj.exc": "", "adv.exc": "",
}


def tiny_tagger():
    from nltk.tag.perceptron import PerceptronTagger

    sentences = [[tuple(pair.rsplit("/", 1)) for pair in s.split()] for s in TRAIN_SENTENCES]
    tagger = PerceptronTagger(load=False)
    state = random.getstate()
    random.seed(0)  # train() shuffles with the global RNG
    try:
        tagger.train(sentences, nr_iter=10)
    finally:
        random.setstate(state)
    return tagger


def write_tiny_wordnet(folder, with_lexnames: bool):
    folder.mkdir(parents=True)
    for name, text in TINY_WORDNET.items():
        (folder / name).write_text(text)
    if with_lexnames:  # NLTK's own wordnet package has it
        (folder / "lexnames").write_text(
            "".join(f"{i:02d}\t{n}\t1\n" for i, n in enumerate(keywords.WORDNET_LEXNAMES)))
    return folder


def make_nltk_data(root):
    """A private NLTK data folder: tagger (NLTK's JSON format), stopwords and WordNet."""
    (root / "corpora" / "stopwords").mkdir(parents=True)
    (root / "corpora" / "stopwords" / "english").write_text("\n".join(TINY_STOPWORDS) + "\n")
    write_tiny_wordnet(root / "corpora" / "wordnet", with_lexnames=True)
    tagger = tiny_tagger()
    if not hasattr(tagger, "save_to_json"):  # NLTK < 3.9: inject it instead
        return root, tagger
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(root)]  # NLTK writes only inside its data path
    try:
        tagger.save_to_json(lang="eng", loc=str(root / "taggers" / "averaged_perceptron_tagger_eng"))
    finally:
        nltk.data.path[:] = saved
    return root, None


@pytest.fixture(autouse=True)
def no_system_wordnet(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(nltk_data, "SYSTEM_WORDNET_DIR", tmp_path_factory.getbasetemp() / "no-wordnet")


@pytest.fixture
def nltk_path(monkeypatch):
    """Point NLTK at the given folders only (no NLTK_DATA); restored afterwards."""
    monkeypatch.delenv("NLTK_DATA", raising=False)

    def set_path(*dirs):
        monkeypatch.setattr(nltk.data, "path", [str(d) for d in dirs])

    return set_path


@pytest.fixture(scope="module")
def nltk_tools(tmp_path_factory):
    root, tagger = make_nltk_data(tmp_path_factory.mktemp("nltk_data"))
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(root)]
    try:
        return load_keyword_tools(allow_download=False, tagger=tagger, system_wordnet=False)
    finally:
        nltk.data.path[:] = saved


@pytest.fixture(scope="module")
def rule_tools(tmp_path_factory):
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(tmp_path_factory.mktemp("empty_nltk_data"))]
    try:
        return load_keyword_tools(allow_download=False, system_wordnet=False)
    finally:
        nltk.data.path[:] = saved


@pytest.fixture(params=["nltk", "rule"])
def tools(request):
    return request.getfixturevalue(f"{request.param}_tools")


def keyword_log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "keywords"]


# --------------------------------------------------------------------------------------------------
# choosing the method

def test_nltk_method_when_data_present(tmp_path, nltk_path, caplog, monkeypatch):
    root, tagger = make_nltk_data(tmp_path / "nltk_data")
    nltk_path(root)
    tried = []
    monkeypatch.setattr(nltk, "download", lambda package, **k: tried.append(package) and False)
    with caplog.at_level(logging.INFO, logger="keywords"):
        tools = load_keyword_tools(allow_download=True, tagger=tagger)
    assert tried == [keywords.PUNKT_PACKAGE]  # the only package missing here
    assert tools.method == "nltk"
    assert tools.stopwords == frozenset(TINY_STOPWORDS)
    assert type(tools.tagger).__name__ == "PerceptronTagger"
    assert tools.noun_lemma("dogs") == "dog" and tools.noun_lemma("men") == "man"
    lines = keyword_log_lines(caplog)
    assert len(lines) == 1 and "NLTK perceptron tagger" in lines[0] and "NLTK WordNet" in lines[0]


def test_rule_method_without_data_logs_one_line(tmp_path, nltk_path, caplog, monkeypatch):
    nltk_path(tmp_path)
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("download with allow_download=False"))
    with caplog.at_level(logging.DEBUG, logger="keywords"):
        tools = load_keyword_tools(allow_download=False)
    assert tools.method == "rules"
    assert tools.stopwords == keywords.ENGLISH_STOPWORDS
    assert isinstance(tools.tagger, keywords.RuleTagger)
    lines = keyword_log_lines(caplog)
    assert len(lines) == 1
    assert "rule-based tagger" in lines[0] and "downloads disabled" in lines[0]
    assert "tagger, punkt, stopwords, wordnet" in lines[0]


def test_one_quiet_download_try_per_missing_package(tmp_path, nltk_path, monkeypatch, capsys, caplog):
    nltk_path(tmp_path)
    tried = []

    def offline_download(package, **kwargs):
        tried.append(package)
        print(f"[nltk_data] Error loading {package}", file=kwargs.get("print_error_to"))
        print(f"[nltk_data] Error loading {package}")
        return False

    monkeypatch.setattr(nltk, "download", offline_download)
    with caplog.at_level(logging.INFO, logger="keywords"):
        tools = load_keyword_tools(allow_download=True)
    assert tools.method == "rules"
    assert sorted(tried) == sorted([keywords.TAGGER_PACKAGE, keywords.PUNKT_PACKAGE,
                                    keywords.STOPWORDS_PACKAGE, keywords.WORDNET_PACKAGE])
    captured = capsys.readouterr()
    assert "nltk_data" not in captured.err + captured.out  # the failure stays quiet
    assert "download failed" in keyword_log_lines(caplog)[0]


def test_a_hanging_download_is_not_repeated(tmp_path, nltk_path, monkeypatch):
    nltk_path(tmp_path)
    monkeypatch.setattr(nltk_data, "DOWNLOAD_TIMEOUT_S", 0.05)
    tried = []

    def hanging_download(package, **kwargs):
        tried.append(package)
        time.sleep(0.06)
        return False

    monkeypatch.setattr(nltk, "download", hanging_download)
    assert load_keyword_tools(allow_download=True).method == "rules"
    assert len(tried) == 1


def test_download_leaves_the_process_socket_timeout_alone(tmp_path, nltk_path, monkeypatch):
    """The short timeout is NLTK's own setting (restored after), never the process-wide socket default."""
    nltk_path(tmp_path)
    seen = []

    def offline_download(package, **kwargs):
        seen.append((socket.getdefaulttimeout(), getattr(nltk.downloader, "NETWORK_TIMEOUT", None)))
        return False

    monkeypatch.setattr(nltk, "download", offline_download)
    before = getattr(nltk.downloader, "NETWORK_TIMEOUT", None)
    load_keyword_tools(allow_download=True)
    assert seen and all(sock is None for sock, _ in seen)
    if before is not None:
        assert all(t == nltk_data.DOWNLOAD_TIMEOUT_S for _, t in seen)
        assert nltk.downloader.NETWORK_TIMEOUT == before


def test_download_that_succeeds_is_used(tmp_path, nltk_path, monkeypatch, caplog):
    nltk_path(tmp_path)

    def fake_download(package, **kwargs):
        if package == keywords.STOPWORDS_PACKAGE:  # as if fetched from the internet
            (tmp_path / "corpora" / "stopwords").mkdir(parents=True)
            (tmp_path / "corpora" / "stopwords" / "english").write_text("the\na\n")
            return True
        return False

    monkeypatch.setattr(nltk, "download", fake_download)
    with caplog.at_level(logging.INFO, logger="keywords"):
        tools = load_keyword_tools(allow_download=True)
    assert tools.method == "tagger=rules,stopwords=nltk,lemmatiser=rules"
    assert tools.stopwords == {"the", "a"}
    assert "downloaded stopwords" in keyword_log_lines(caplog)[0]


def test_debian_style_wordnet_folder_is_used(tmp_path, nltk_path, monkeypatch):
    """A folder laid out like /usr/share/wordnet (no lexnames) serves the lemmatiser."""
    nltk_path(tmp_path / "empty")
    wn_dir = write_tiny_wordnet(tmp_path / "usr-share-wordnet", with_lexnames=False)
    monkeypatch.setattr(nltk_data, "SYSTEM_WORDNET_DIR", wn_dir)
    tools = load_keyword_tools(allow_download=False)
    assert tools.method == "tagger=rules,stopwords=rules,lemmatiser=system-wordnet"
    assert tools.noun_lemma("dogs") == "dog" and tools.noun_lemma("men") == "man"
    assert tools.verb_lemma("ran") == "run" and tools.verb_lemma("climbs") == "climb"
    assert not list(wn_dir.glob("lexnames"))  # the source folder is left untouched
    assert extract_phrases("A black dog runs on the grass .", tools) == ["black dog", "dog", "run", "grass"]


@pytest.mark.skipif(not (Path("/usr/share/wordnet") / "index.noun").is_file(),
                    reason="Debian's wordnet-base is not installed (optional)")
def test_real_debian_wordnet(nltk_path, tmp_path):
    nltk_path(tmp_path)
    tools = load_keyword_tools(allow_download=False, system_wordnet=Path("/usr/share/wordnet"))
    assert tools.method.endswith("lemmatiser=system-wordnet")
    lemmas = [tools.noun_lemma(w) for w in "dogs children leaves glasses boss buses t-shirts".split()]
    assert lemmas == "dog child leaf glasses boss bus t-shirt".split()
    assert [tools.verb_lemma(w) for w in "rides ran sits".split()] == "ride run sit".split()


# --------------------------------------------------------------------------------------------------
# phrases, on both methods

def test_plural_nouns_and_verb(tools):
    phrases = extract_phrases("Two dogs are running through the snow .", tools)
    assert "dog" in phrases and "snow" in phrases and "dogs" not in phrases
    assert "running" in phrases  # -ing forms are kept as written (see crossmodal/keywords/phrases.py)
    assert not {"two", "are", "through", "the", "."} & set(phrases)


def test_adjective_noun_pair(tools):
    phrases = extract_phrases("A black dog runs", tools)
    assert phrases == ["black dog", "dog", "run"]


def test_lemmas_lower_case_no_stopwords_no_repeats(tools):
    caption = "Two men are playing with a red ball . The men run with the ball ."
    phrases = extract_phrases(caption, tools)
    assert "man" in phrases and "red ball" in phrases and "ball" in phrases and "playing" in phrases
    assert len(phrases) == len(set(phrases))
    for p in phrases:
        assert p == p.lower() and not set(p.split()) & tools.stopwords


def test_nouns_of(tools):
    assert nouns_of("Two dogs are running through the snow .", tools) == ["dog", "snow"]
    assert nouns_of("A black dog runs", tools) == ["dog"]


def test_deterministic(tools):
    caption = "A black dog runs on the grass ."
    assert extract_phrases(caption, tools) == ["black dog", "dog", "run", "grass"]
    assert extract_phrases(caption, tools) == extract_phrases(caption, tools)


def test_rule_lemmatisers():
    nouns = "dogs men women children feet teeth mice babies benches boxes shoes horses leaves skis".split()
    assert [keywords.rule_noun_lemma(w) for w in nouns] == \
        "dog man woman child foot tooth mouse baby bench box shoe horse leaf ski".split()
    same = "people glasses jeans shorts grass bus tennis christmas lens".split()
    assert [keywords.rule_noun_lemma(w) for w in same] == same
    verbs = "runs carries watches goes rides uses ran jumped stopped smiled".split()
    assert [keywords.rule_verb_lemma(w) for w in verbs] == \
        "run carry watch go ride use run jump stop smile".split()


def test_rule_tagger_context(rule_tools):
    def tags(text):
        return dict(rule_tools.tagger.tag(text.split()))

    t = tags("A little girl climbing into a wooden building")
    assert (t["little"], t["girl"], t["climbing"], t["wooden"], t["building"]) == ("JJ", "NN", "VBG", "JJ", "NN")
    assert tags("Dogs run in the snow")["run"] == "VBP"
    assert tags("A dog runs")["runs"] == "VBZ"
    assert tags("A boy in swim trunks jumps into the pool")["jumps"] == "VBZ"
    assert tags("Two soccer players")["players"] == "NNS"
    assert tags("A man is building a sandcastle")["building"] == "VBG"


def test_rule_phrases(rule_tools):
    def phrases(text):
        return extract_phrases(text, rule_tools)

    assert phrases("A man holds a tennis ball next to a parked car .") == \
        ["man", "hold", "tennis ball", "tennis", "ball", "parked car", "car"]
    assert phrases("A black and white dog jumps into a swimming pool .") == \
        ["black dog", "white dog", "dog", "jump", "swimming pool", "pool"]
    assert phrases("A woman wearing sunglasses stands in front of a lot of people .") == \
        ["woman", "sunglasses", "stand", "people"]
    assert phrases("Children play on the wet sand .") == ["child", "play", "wet sand", "sand"]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_clean_phrases(rule_tools, text):
    phrases = extract_phrases(text, rule_tools)
    assert len(phrases) == len(set(phrases))
    for p in phrases:
        assert re.fullmatch(r"[a-z]+(?:-[a-z]+)*(?: [a-z]+(?:-[a-z]+)*)?", p), p


@pytest.mark.skipif(not FLICKR8K.is_file(), reason="no flickr8k captions")
def test_real_captions_rule_method(rule_tools):
    from crossmodal.captions import read_captions

    caps = read_captions(FLICKR8K).captions[:1000]
    phrases = [p for c in caps for p in extract_phrases(c.text, rule_tools)]
    assert len(phrases) > 4 * len(caps)
    assert not set(phrases) & (keywords.ENGLISH_STOPWORDS | keywords.CAPTION_STOPWORDS)
    assert {"dog", "man", "girl", "black dog", "running", "grass"} <= set(phrases)


# --------------------------------------------------------------------------------------------------
# samples and files

def test_augment_one_sample_per_image_phrase_from_first_caption(rule_tools):
    caps = CaptionSet([
        Caption("a.jpg", 0, "A black dog runs ."),
        Caption("a.jpg", 1, "A dog runs in the snow ."),
        Caption("b.jpg", 0, "A dog sleeps ."),
    ])
    seen = []
    samples = augment_captions(caps, rule_tools, progress=lambda it: (seen.append(c) or c for c in it))
    assert len(seen) == 3
    assert samples == augment_captions(caps, rule_tools)
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


def test_sentence_augment_end_to_end(tmp_path, nltk_path, caplog):
    import sentence_augment

    nltk_path(tmp_path / "no_nltk_data")
    caps = tmp_path / "caps.token"
    caps.write_text(CAPTIONS)
    with caplog.at_level(logging.INFO):
        rc = sentence_augment.main(["--captions", str(caps), "--work-dir", str(tmp_path / "work"), "--no-download"])
    assert rc == 0
    samples = read_keyword_samples(tmp_path / "work" / "keywords_augmented.txt")
    got = {(s.image, s.phrase): s.caption_key for s in samples}
    assert got["1000092795.jpg", "dog"] == "1000092795.jpg#0"
    assert got["1000092795.jpg", "black dog"] == "1000092795.jpg#1"
    assert ("2000.jpg", "red shirt") in got and ("2000.jpg", "climb") in got
    assert "3 captions" in caplog.text and f"{len(samples)} samples" in caplog.text
    assert "top phrases" in caplog.text
    assert len(keyword_log_lines(caplog)) == 1

    rc = sentence_augment.main(["--captions", str(caps), "--out", str(tmp_path / "o.txt"), "--no-download"])
    assert rc == 0 and read_keyword_samples(tmp_path / "o.txt") == samples


def test_sentence_augment_default_path():
    from crossmodal.paths import Layout

    assert Layout(None, config.DATA_DIR).keywords_file == config.DATA_DIR / "flickr30k_keywords_augmented.txt"
    assert Layout(Path("/w")).keywords_file == Path("/w") / "keywords_augmented.txt"


def test_sentence_augment_bad_captions_exit_2(tmp_path, nltk_path, caplog):
    import sentence_augment

    nltk_path(tmp_path)
    caps = tmp_path / "caps.token"
    caps.write_text("1000092795.jpg#0\tA dog .\nno tab here\n")
    with caplog.at_level(logging.ERROR):
        rc = sentence_augment.main(["--captions", str(caps), "--out", str(tmp_path / "o.txt"), "--no-download"])
    assert rc == 2 and not (tmp_path / "o.txt").exists()
    assert "caps.token:2" in caplog.text

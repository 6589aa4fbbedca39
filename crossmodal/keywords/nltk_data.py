"""The keyword tools: finding, downloading and reading NLTK's data (tagger, punkt, stopwords,
WordNet, or Debian's WordNet files) and ``load_keyword_tools``, which assembles ``KeywordTools``
from what is there and the rule method (``rule_tagger``) for what is not.

Which tools do the work is decided once by ``load_keyword_tools`` and logged in one line; its
``method`` is "nltk", "rules", or e.g. "tagger=rules,stopwords=rules,lemmatiser=system-wordnet":

* NLTK data present (``averaged_perceptron_tagger_eng``, ``punkt_tab``, ``stopwords``,
  ``wordnet``): NLTK's perceptron tagger, ``word_tokenize``, its stopword list and WordNet
  lemmatisation. Missing packages are downloaded once each when allowed (punkt only splits
  sentences, which captions rarely have: without it a regular expression gives the same tokens).
* Otherwise each missing piece is replaced by one that needs no downloaded data: a regular
  expression tokeniser, ``ENGLISH_STOPWORDS``, a rule-based tagger (NLTK's ``UnigramTagger`` over
  closed-class word lists, backed by a ``RegexpTagger`` with suffix rules, then a few context
  rules) and a rule-based lemmatiser. When the Debian package ``wordnet-base`` is installed
  (``/usr/share/wordnet``) its files are read with NLTK's ``WordNetCorpusReader`` for
  lemmatisation and to check unknown words' part of speech.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from crossmodal.keywords.rule_tagger import (
    CAPTION_STOPWORDS,
    ENGLISH_STOPWORDS,
    IRREGULAR_PLURALS,
    IRREGULAR_VERBS,
    KEEP_PLURAL,
    SINGULAR_S,
    RuleTagger,
    regexp_tokenize,
    rule_noun_lemma,
    rule_verb_lemma,
)

log = logging.getLogger("keywords")

SYSTEM_WORDNET_DIR = Path("/usr/share/wordnet")  # Debian/Ubuntu package wordnet-base
DOWNLOAD_TIMEOUT_S = 10.0  # per download (NLTK's own is 120 s); offline they fail at once anyway

# NLTK data packages (NLTK >= 3.9 names; older NLTK uses the pickled tagger and "punkt").
TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
PUNKT_PACKAGE = "punkt_tab"
STOPWORDS_PACKAGE = "stopwords"
WORDNET_PACKAGE = "wordnet"

# The 45 lexicographer file names of WordNet 3.0 (its ``lexnames`` file, which NLTK's reader needs
# and Debian's wordnet-base lacks).
WORDNET_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
# index.* and *.exc are all lemmatisation needs; data.adj is read by the reader's constructor.
_WORDNET_FILES = (
    "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc", "data.adj",
)


# --- the tools ----------------------------------------------------------------------------------

class Tagger(Protocol):
    def tag(self, tokens: list[str]) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class KeywordTools:
    """The tokeniser, tagger, stopwords and lemmatiser chosen by ``load_keyword_tools``."""

    method: str  # "nltk" | "rules" | "tagger=..,stopwords=..,lemmatiser=.." when mixed
    description: str  # what was logged: the method, its tools, and why
    tokenize: Callable[[str], list[str]]
    tagger: Tagger  # (token, Penn Treebank tag) per token
    stopwords: frozenset[str]  # NLTK's English list, or ENGLISH_STOPWORDS
    noun_lemma: Callable[[str], str]
    verb_lemma: Callable[[str], str]
    skip_words: frozenset[str] = frozenset()  # stopwords | CAPTION_STOPWORDS: never in a phrase
    identity: str = ""  # the method and its tools without the why: equal tools give equal phrases


def _resources() -> dict[str, tuple[tuple[str, ...], str]]:
    """Name in messages -> (NLTK resource paths to look for, package to download)."""
    from nltk.tag.perceptron import PerceptronTagger

    if hasattr(PerceptronTagger, "load_from_json"):  # NLTK >= 3.9: JSON tagger, punkt_tab
        tagger = (("taggers/averaged_perceptron_tagger_eng/",), TAGGER_PACKAGE)
        punkt = (("tokenizers/punkt_tab/english/",), PUNKT_PACKAGE)
    else:
        tagger = (("taggers/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle",),
                  "averaged_perceptron_tagger")
        punkt = (("tokenizers/punkt/english.pickle",), "punkt")
    return {
        "tagger": tagger,
        "punkt": punkt,
        "stopwords": (("corpora/stopwords/english", "corpora/stopwords.zip/stopwords/english"),
                      STOPWORDS_PACKAGE),
        "wordnet": (("corpora/wordnet/", "corpora/wordnet.zip/wordnet/"), WORDNET_PACKAGE),
    }


def _find_nltk(paths: Sequence[str]) -> Any | None:
    import nltk

    for p in paths:
        try:
            return nltk.data.find(p)
        except (LookupError, OSError, ValueError):  # ValueError/PermissionError: NLTK's path checks
            continue
    return None


def _download(package: str) -> bool:
    """One quiet ``nltk.download``, with a short network timeout where NLTK's downloader has one to
    set (``nltk.downloader.NETWORK_TIMEOUT``; an NLTK without it is called as it is); False on any
    failure."""
    import nltk

    downloader = getattr(nltk, "downloader", None)
    old_timeout = getattr(downloader, "NETWORK_TIMEOUT", None)
    if old_timeout is not None:
        downloader.NETWORK_TIMEOUT = DOWNLOAD_TIMEOUT_S  # read at call time by NLTK's urlopen calls
    sink = io.StringIO()
    try:
        # quiet=True still prints errors: keep them off the terminal, the one log line says it all
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return bool(nltk.download(package, quiet=True, raise_on_error=False, print_error_to=sink))
    except Exception:  # noqa: BLE001 - any downloader failure means "use the fallback"
        return False
    finally:
        if old_timeout is not None:
            downloader.NETWORK_TIMEOUT = old_timeout


@lru_cache(maxsize=1)
def _wordnet_reader_class() -> type:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class LemmaWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the Open Multilingual Wordnet mapping it builds on start: only
        the indexes are used here, and the mapping needs ``index.sense``, absent from Debian's
        files."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return LemmaWordNetReader


def _open_wordnet(root: Any) -> Any:
    """A WordNet reader over ``root`` (a folder or NLTK path pointer); indexes only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        return _wordnet_reader_class()(root, None)


_system_wordnet_cache: dict[str, Any] = {}


def _open_system_wordnet(src: Path) -> Any:
    """Debian's WordNet files read by NLTK's reader, through a private copy NLTK will accept.

    NLTK reads only below ``nltk.data.path`` and refuses symlinks and hard links there; its reader
    also needs a ``lexnames`` file that the package lacks. So the index, exception and adjective
    files (~10 MB) are copied into a private temporary ``<dir>/corpora/wordnet`` (removed at
    exit) with ``lexnames`` written beside them, and ``<dir>`` is appended to ``nltk.data.path``.
    """
    import nltk

    key = str(src.resolve())
    if key in _system_wordnet_cache:
        return _system_wordnet_cache[key]
    missing = [f for f in _WORDNET_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: not a WordNet 3.0 folder (missing {', '.join(missing)})")
    root = Path(tempfile.mkdtemp(prefix="keywords-wordnet-"))  # mode 0700: NLTK wants it private
    atexit.register(shutil.rmtree, root, True)
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    for name in _WORDNET_FILES:
        shutil.copyfile(src / name, folder / name)
    pos_number = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    (folder / "lexnames").write_text(
        "".join(f"{i:02d}\t{name}\t{pos_number[name.split('.')[0]]}\n" for i, name in enumerate(WORDNET_LEXNAMES)),
        encoding="utf-8")
    nltk.data.path.append(str(root))
    reader = _open_wordnet(str(folder))
    _system_wordnet_cache[key] = reader
    return reader


def load_keyword_tools(
    allow_download: bool = True,
    *,
    tagger: Tagger | None = None,
    system_wordnet: str | os.PathLike | None | bool = True,
) -> KeywordTools:
    """Pick the best available tools and log which, and why, in one line.

    Each missing NLTK data package is downloaded at most once when ``allow_download``; if a
    download hangs until the timeout the rest are not tried (they would hang too). Whatever is
    still missing is replaced by a data-free method (see the module docstring). ``tagger``
    injects a ready NLTK-style tagger (anything with ``.tag(tokens)``). ``system_wordnet`` is the
    folder of Debian's WordNet files used when NLTK's WordNet is absent: True means
    ``SYSTEM_WORDNET_DIR`` (read at call time), False/None never.
    """
    try:
        import nltk  # noqa: F401
    except ImportError as err:
        raise RuntimeError("keyword extraction needs NLTK: pip install nltk") from err

    resources = _resources()
    if tagger is not None:
        del resources["tagger"]
    found = {name: _find_nltk(paths) for name, (paths, _) in resources.items()}
    downloaded: list[str] = []
    failed: list[str] = []
    network_hangs = False
    if allow_download:
        for name in [n for n, ptr in found.items() if ptr is None]:
            if network_hangs:  # don't wait out the timeout once per package
                failed.append(name)
                continue
            paths, package = resources[name]
            started = time.monotonic()
            if _download(package) and (ptr := _find_nltk(paths)) is not None:
                found[name] = ptr
                downloaded.append(name)
            else:
                failed.append(name)
                network_hangs = time.monotonic() - started >= DOWNLOAD_TIMEOUT_S
    missing = [name for name, ptr in found.items() if ptr is None]
    notes: list[str] = []  # data found but unusable

    stopwords, stop_kind = ENGLISH_STOPWORDS, "rules"
    if found["stopwords"] is not None:
        try:
            words = frozenset(_read_stopwords(found["stopwords"]))
            if words:
                stopwords, stop_kind = words, "nltk"
        except Exception as err:  # noqa: BLE001 - an unreadable corpus: fall back, and say so
            notes.append(f"NLTK stopwords unreadable ({type(err).__name__})")

    wordnet = None
    lemma_kind, lemma_desc = "rules", "rule-based lemmatiser"
    if found["wordnet"] is not None:
        try:
            wordnet = _open_wordnet(found["wordnet"])
            lemma_kind, lemma_desc = "nltk", "NLTK WordNet lemmatiser"
        except Exception as err:  # noqa: BLE001
            notes.append(f"NLTK WordNet unreadable ({type(err).__name__}: {err})")
    wn_dir = SYSTEM_WORDNET_DIR if system_wordnet is True else (system_wordnet or None)
    if wordnet is None and wn_dir is not None and Path(wn_dir).is_dir():
        try:
            wordnet = _open_system_wordnet(Path(wn_dir))
            lemma_kind, lemma_desc = "system-wordnet", f"WordNet lemmatiser on {wn_dir}"
        except Exception as err:  # noqa: BLE001
            notes.append(f"{wn_dir} unusable ({type(err).__name__}: {err})")
    noun_lemma, verb_lemma = _make_lemmatizers(wordnet)

    tag_kind, tag_desc = "nltk", "NLTK perceptron tagger"
    if tagger is None and found["tagger"] is not None:
        try:
            from nltk.tag.perceptron import PerceptronTagger

            tagger = PerceptronTagger()
        except Exception as err:  # noqa: BLE001
            notes.append(f"NLTK tagger unreadable ({type(err).__name__})")
    if tagger is None:
        tagger = RuleTagger(wordnet)
        tag_kind, tag_desc = "rules", "built-in rule-based tagger"

    tokenize, tok_desc = regexp_tokenize, "regexp tokeniser"
    if found["punkt"] is not None:
        from nltk.tokenize import word_tokenize

        tokenize, tok_desc = word_tokenize, "punkt tokeniser"

    kinds = {"tagger": tag_kind, "stopwords": stop_kind, "lemmatiser": lemma_kind}
    if len(set(kinds.values())) == 1 and tag_kind in ("nltk", "rules"):
        method = tag_kind
    else:
        method = ",".join(f"{k}={v}" for k, v in kinds.items())
    stop_desc = "NLTK stopwords" if stop_kind == "nltk" else "built-in stopwords"
    why_parts = []
    if downloaded:
        why_parts.append(f"downloaded {', '.join(downloaded)}")
    if missing:
        how = "download failed" if failed else "downloads disabled"
        why_parts.append(f"NLTK data missing ({', '.join(missing)}) and {how}")
    why = "; ".join(why_parts + notes) or "all NLTK data found"
    identity = f"{method}: {tag_desc} + {lemma_desc} + {stop_desc} + {tok_desc}"
    description = f"{identity} ({why})"
    log.info("method %s", description)  # the one line saying which method ran, and why
    return KeywordTools(method, description, tokenize, tagger, stopwords, noun_lemma, verb_lemma,
                        stopwords | CAPTION_STOPWORDS, identity)


def _read_stopwords(pointer: Any) -> list[str]:
    with pointer.open() as f:  # an NLTK path pointer (plain file or zip member)
        text = f.read()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [w.strip().lower() for w in text.splitlines() if w.strip()]


# --- lemmatisers --------------------------------------------------------------------------------

def _make_lemmatizers(wordnet: Any | None) -> tuple[Callable[[str], str], Callable[[str], str]]:
    @lru_cache(maxsize=None)
    def noun_lemma(word: str) -> str:
        if word in KEEP_PLURAL or word in SINGULAR_S:
            return word
        if word in IRREGULAR_PLURALS:
            return IRREGULAR_PLURALS[word]
        if wordnet is not None:
            forms = wordnet._morphy(word, "n")  # all WordNet analyses, as WordNetLemmatizer uses
            if forms:
                if word in forms and word.endswith(("ss", "us", "is")):
                    return word  # "boss" is no plural of "bos"
                return min(forms, key=len)  # the shortest, like WordNetLemmatizer.lemmatize
        return rule_noun_lemma(word)

    @lru_cache(maxsize=None)
    def verb_lemma(word: str) -> str:
        if word in IRREGULAR_VERBS:
            return IRREGULAR_VERBS[word]
        if wordnet is not None:
            forms = wordnet._morphy(word, "v")
            if forms:
                return forms[0]  # WordNet's rule order: "rides" -> ride before rid
        return rule_verb_lemma(word)

    return noun_lemma, verb_lemma

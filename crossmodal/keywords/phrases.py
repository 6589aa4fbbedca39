"""Keywords and short phrases of a caption (``extract_phrases``, ``nouns_of``), and the keyword samples
of a caption set (``augment_captions``, ``phrase_counts``), so one-word ("dog") and two-word
("black dog") queries have training text of their own.

From each caption we take, lower-cased and without stopwords:

* nouns, lemmatised: "dogs" -> "dog", "men" -> "man" (a few plural-only words such as
  "glasses", "jeans", "shorts" stay plural: their singular means something else);
* adjective + noun: "black dog", "curly hair"; a participle before a noun counts as an adjective
  ("parked car", "swimming pool");
* noun + noun compounds: "tennis ball", "fire hydrant" (the head noun lemmatised);
* verbs. Decision: an -ing form stays as written ("running", "surfing") because that is how both
  captions and people's queries name an action, and lemmatising it collides with nouns
  ("fishing" -> "fish", "boxing" -> "box", "skateboarding" -> "skateboard"). Other finite forms
  are lemmatised ("runs", "ran" -> "run"). A past participle outside a noun phrase ("dressed in
  red", "covered in mud") is not emitted: it is mostly a state, rarely a useful query.

Phrases come out in caption order of their first word, a two-word phrase before the one-word
phrase starting at the same word ("black dog", "dog"), without duplicates. Besides the stopwords,
words that name nothing visible are dropped (``CAPTION_STOPWORDS``: numbers, "something",
"wearing" ...; ``RELATIONAL_OF_NOUNS``: "front" in "in front of", "lot" in "a lot of").

One method, the same on every machine (``METHOD``): NLTK's regular-expression tokeniser, the rule
tagger (``tagger.RuleTagger``), LemmInflect's lemmas (``lemmas``) and the built-in stopwords. None
of it needs downloaded data.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from crossmodal.atomic_io import check_free_space
from crossmodal.captions import Caption, CaptionSet, list_hash
from crossmodal.keywords.lemmas import noun_lemma, verb_lemma
from crossmodal.keywords.samples import KeywordSample, write_keyword_samples
from crossmodal.keywords.tagger import RuleTagger, regexp_tokenize
from crossmodal.keywords.words import CAPTION_STOPWORDS, ENGLISH_STOPWORDS
from crossmodal.querybank import query_kind
from crossmodal.resumable import ChunkWriter, WorkFolder, flush_interval

log = logging.getLogger(__name__)

UNIT_CAPTIONS = 1000  # captions per unit of a resumable run (well under a second of work)
CHUNK_CAPTIONS = 50_000  # at most this many captions per saved chunk (one is also saved by time)

# "in front of", "on top of", "a lot of", "a set of stairs": the noun before "of" is no keyword.
RELATIONAL_OF_NOUNS = frozenset("""
front top middle side edge end bottom back center centre lot lots bunch couple pair kind sort
type piece part rest number variety series set sides flight
""".split())

_PHRASE_WORD = re.compile(r"^[a-z]+(?:-[a-z]+)*$")  # a keyword word: ASCII letters, inner hyphens
SKIP_WORDS = ENGLISH_STOPWORDS | CAPTION_STOPWORDS  # never in a phrase


def method() -> str:
    """What makes the phrases, versions included: recorded in the keyword file and in a resumable
    run's plan, so phrases of another method are never mixed in."""
    from importlib.metadata import version

    return (f"rule tagger (NLTK {version('nltk')} UnigramTagger + RegexpTagger) + LemmInflect "
            f"{version('lemminflect')} lemmas + built-in stopwords + regexp tokeniser")


@lru_cache(maxsize=1)
def _tagger() -> RuleTagger:
    return RuleTagger()

_NOUN, _ADJ, _VERB, _MOD, _OTHER = "N", "A", "V", "M", "O"


def _classify(tagged: list[tuple[str, str]], skip: frozenset[str]) -> list[str]:
    """A coarse class per token: noun, adjective, verb, pre-noun modifier (participle) or other."""
    n = len(tagged)
    classes = []
    for i, (w, t) in enumerate(tagged):
        if not _PHRASE_WORD.match(w) or w in skip:
            c = _OTHER
        elif t.startswith("NN"):
            relational = w in RELATIONAL_OF_NOUNS and i + 1 < n and tagged[i + 1][0] == "of"
            c = _OTHER if relational else _NOUN
        elif t in ("JJ", "JJR", "JJS"):
            c = _ADJ
        elif t.startswith("VB"):
            c = _VERB
        else:
            c = _OTHER
        classes.append(c)
    # A participle after a determiner/adjective (or first) and before a noun modifies the noun:
    # "a parked car", "the swimming pool"; after a noun it is a verb ("man wearing glasses").
    for i, (w, t) in enumerate(tagged):
        if classes[i] == _VERB and t in ("VBG", "VBN") and i + 1 < n and classes[i + 1] in (_NOUN, _ADJ):
            prev_t = tagged[i - 1][1] if i > 0 else ""
            if i == 0 or prev_t in ("DT", "CD", "PRP$", "JJ", "JJR", "JJS") or (prev_t in ("CC", "IN") and t == "VBN"):
                classes[i] = _MOD
    return classes


def _phrases_with_kind(caption: str) -> list[tuple[str, str]]:
    """(phrase, kind) pairs, kind in noun | verb | adj_noun | compound, in the documented order."""
    tokens = regexp_tokenize(caption)
    if not tokens:
        return []
    tagged = [(w.lower(), t) for w, t in _tagger().tag(tokens)]
    classes = _classify(tagged, SKIP_WORDS)
    found: list[tuple[int, int, int, str, str]] = []  # (first word, -words, order, phrase, kind)

    def add(start: int, phrase: str, kind: str) -> None:
        words = phrase.split()
        if all(_PHRASE_WORD.match(p) and p not in SKIP_WORDS for p in words):
            found.append((start, -len(words), len(found), phrase, kind))

    n = len(tagged)
    i = 0
    while i < n:
        c = classes[i]
        if c in (_NOUN, _ADJ, _MOD):
            # a chunk of modifiers and nouns; "and"/"or"/"," may join two modifiers
            j = i
            while j < n and (
                classes[j] in (_NOUN, _ADJ, _MOD)
                or (tagged[j][0] in ("and", "or", ",") and j > i and classes[j - 1] in (_ADJ, _MOD)
                    and j + 1 < n and classes[j + 1] in (_ADJ, _MOD))
            ):
                j += 1
            _chunk_phrases(i, tagged[i:j], classes[i:j], add)
            i = j
            continue
        if c == _VERB:
            w, t = tagged[i]
            if t == "VBG":
                add(i, w, "verb")
            elif t != "VBN":
                add(i, verb_lemma(w), "verb")
        i += 1
    found.sort()
    out: dict[str, str] = {}
    for *_, phrase, kind in found:
        out.setdefault(phrase, kind)
    return list(out.items())


def _chunk_phrases(offset: int, tagged: Sequence[tuple[str, str]], classes: Sequence[str],
                   add: Callable[[int, str, str], None]) -> None:
    mods: list[tuple[int, str]] = []
    k = 0
    while k < len(tagged):
        if classes[k] in (_ADJ, _MOD):
            mods.append((offset + k, tagged[k][0]))
            k += 1
        elif classes[k] == _NOUN:
            start = k
            while k < len(tagged) and classes[k] == _NOUN:
                k += 1
            run = [w for w, _ in tagged[start:k]]
            head = noun_lemma(run[-1])
            for m, word in enumerate(run[:-1]):
                add(offset + start + m, noun_lemma(word), "noun")
            add(offset + k - 1, head, "noun")
            if len(run) >= 2:  # the modifying noun as written: "sports car", "tennis ball"
                add(offset + k - 2, f"{run[-2]} {head}", "compound")
            for pos, mod in mods:
                add(pos, f"{mod} {head}", "adj_noun")
            mods = []
        else:  # "and"/"," between modifiers
            k += 1


def extract_phrases(caption: str) -> list[str]:
    """Keywords and short phrases of one caption (see the module docstring for what and in which order)."""
    return [p for p, _ in _phrases_with_kind(caption)]


def nouns_of(caption: str) -> list[str]:
    """The caption's nouns, lemmatised (evaluation's one-word queries)."""
    return [p for p, kind in _phrases_with_kind(caption) if kind == "noun"]


def leading_phrase(caption: str) -> str | None:
    """The caption's first words up to and including its second noun ("a man climbing a rock" of
    "A man climbing a rock face ."), lowercased: a description as people type one into a search box.
    None when that is not a phrase query's length (``querybank.query_kind``)."""
    tokens = regexp_tokenize(caption)
    nouns = 0
    for i, (_, tag) in enumerate(_tagger().tag(tokens)):
        if tag.startswith("NN"):
            nouns += 1
            if nouns == 2:
                words = [w.lower() for w in tokens[: i + 1] if any(ch.isalnum() for ch in w)]
                return " ".join(words) if query_kind(" ".join(words)) == "phrase" else None
    return None


# --- the samples of a caption set ---------------------------------------------------------------

def caption_key(caption: Caption) -> str:
    return caption.key


def augment_captions(
    captions: CaptionSet,
    progress: bool | Callable[[Iterable[Caption]], Iterable[Caption]] = False,
    work_dir: str | os.PathLike | None = None,
    *,
    flush_seconds: float | None = None,
) -> list[KeywordSample]:
    """One sample per distinct (image, phrase), from the first caption (file order) yielding it.

    ``progress``: True shows a tqdm bar over the captions, or pass a wrapper of your own.
    ``work_dir``: resumable: the phrases of finished captions are saved there in chunks
    (``crossmodal.resumable``, every ``flush_seconds``), and a rerun for the same captions and
    method continues from them. The caller removes it once the samples are saved.
    """
    caps = captions.captions
    n_units = (len(caps) + UNIT_CAPTIONS - 1) // UNIT_CAPTIONS

    def unit_captions(u: int) -> list[Caption]:
        return caps[u * UNIT_CAPTIONS : (u + 1) * UNIT_CAPTIONS]

    phrases: dict[int, list[list[str]]] = {}  # unit -> the phrases of each of its captions
    writer = None
    if work_dir is not None:
        plan = {"captions_sha256": list_hash(f"{c.key}\t{c.text}" for c in caps), "tools": method(),
                "unit_size": UNIT_CAPTIONS, "format": 1}
        work = WorkFolder(work_dir, plan)
        for chunk in work.chunks():
            saved = [line.split("\t") if line else [] for line in chunk.meta()["phrases"]]
            for k, u in enumerate(chunk.units):
                phrases[u] = saved[k * UNIT_CAPTIONS : (k + 1) * UNIT_CAPTIONS]

        def save(start: int, stop: int, groups: list[list[list[str]]]) -> None:
            # one line per caption, its phrases joined by tabs (a phrase holds letters, hyphens, spaces)
            work.save(start, stop, {"phrases": ["\t".join(found) for g in groups for found in g]})

        writer = ChunkWriter(save, CHUNK_CAPTIONS, flush_interval(flush_seconds))
    pending = [u for u in range(n_units) if u not in phrases]
    if phrases:
        log.info("resuming in %s: %d of %d captions already done", work_dir,
                 len(caps) - sum(len(unit_captions(u)) for u in pending), len(caps))

    source: Iterable[Caption] = (c for u in pending for c in unit_captions(u))
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(caps), initial=len(caps) - sum(len(unit_captions(u)) for u in pending),
                   unit="caption", desc="keywords")
    elif callable(progress):
        source = progress(source)
    items: Iterator[Caption] = iter(source)
    try:
        for u in pending:
            n = len(unit_captions(u))
            phrases[u] = [extract_phrases(next(items).text) for _ in range(n)]
            if writer is not None:
                writer.add(u, phrases[u], n)
            if bar is not None:
                bar.update(n)
        if writer is not None:
            writer.flush()
    finally:
        if bar is not None:
            bar.close()

    seen: set[tuple[str, str]] = set()
    samples: list[KeywordSample] = []
    for u in range(n_units):
        for cap, found in zip(unit_captions(u), phrases[u]):
            key = caption_key(cap)
            for phrase in found:
                if (cap.image, phrase) not in seen:
                    seen.add((cap.image, phrase))
                    samples.append(KeywordSample(cap.image, key, phrase))
    return samples


def keyword_work_dir(out: str | os.PathLike) -> Path:
    """Where ``make_keyword_file`` keeps its unfinished work: a hidden folder beside ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def make_keyword_file(out: str | os.PathLike, captions: CaptionSet, progress: bool = True) -> list[KeywordSample]:
    """Write the keyword file of ``captions`` to ``out`` (atomically) and return its samples.

    Resumable: a killed run continues from the captions it finished (``augment_captions``). It
    refuses to start when the disk cannot hold the result (about 3 times the captions' text: the
    file, about twice their size, and the unfinished work).
    """
    out = Path(out)
    text_bytes = sum(len(c.key) + len(c.text) + 2 for c in captions.captions)
    check_free_space(out.parent, 3 * text_bytes, "the keyword samples")
    work = keyword_work_dir(out)
    samples = augment_captions(captions, progress=progress, work_dir=work)
    write_keyword_samples(out, samples, method=method())
    shutil.rmtree(work, ignore_errors=True)
    return samples


def phrase_counts(samples: Iterable[KeywordSample]) -> dict[str, int]:
    """Images per phrase, most frequent first (ties alphabetical)."""
    counts = Counter(s.phrase for s in samples)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

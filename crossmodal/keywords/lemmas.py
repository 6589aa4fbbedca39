"""Lemmas of caption words: "dogs" -> "dog", "men" -> "man", "ran" -> "run".

LemmInflect (``lemminflect`` on PyPI) looks words up in the English dictionary it ships: the same
lemmas on every machine, with no downloaded data. The word lists of ``words`` come first, where a
caption means a word otherwise: a few plural-only nouns stay plural ("glasses", "jeans", "shorts":
their singular means something else), and some plurals have a lemma LemmInflect ranks second
("leaves" -> "leaf", not "leave"). A word the dictionary does not know (names, new words) keeps its
spelling, but for a plural "-s" on a noun ("labradors" -> "labrador"): LemmInflect's own guesses for
such words can be Latin ("corgis" -> "corgus").
"""
from __future__ import annotations

from functools import lru_cache

from crossmodal.keywords.words import IRREGULAR_PLURALS, IRREGULAR_VERBS, KEEP_PLURAL, SINGULAR_S


@lru_cache(maxsize=None)
def noun_lemma(word: str) -> str:
    """A lower-case noun's singular."""
    if word in KEEP_PLURAL or word in SINGULAR_S:
        return word
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    from lemminflect import getAllLemmas, getLemma

    known = getLemma(word, "NOUN", lemmatize_oov=False)
    if known:
        return known[0]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    # a plural-looking word the dictionary knows otherwise ("carries", tagged a noun: a verb there)
    other = next(iter(getAllLemmas(word).values()), ())
    return other[0] if other else word[:-1]


@lru_cache(maxsize=None)
def verb_lemma(word: str) -> str:
    """A lower-case finite verb's base form (a word the dictionary does not know is kept)."""
    if word in IRREGULAR_VERBS:
        return IRREGULAR_VERBS[word]
    from lemminflect import getLemma

    known = getLemma(word, "VERB", lemmatize_oov=False)
    return known[0] if known else word

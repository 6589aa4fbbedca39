"""Part-of-speech tags for caption words, with no downloaded data: ``RuleTagger`` and the tokeniser.

The tagger: NLTK's ``UnigramTagger`` over closed-class word lists and the caption word lists of
``words``, backed by a ``RegexpTagger`` with suffix rules; then a few context rules settle the
ambiguous cases. Deterministic: the same words give the same tags on every machine.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from crossmodal.keywords.lemmas import verb_lemma
from crossmodal.keywords.words import (
    ABLE_NOUNS,
    ADJECTIVES,
    COLOURS,
    COMMON_VERBS,
    ING_NOUNS,
    IRREGULAR_PLURALS,
    IRREGULAR_VERBS,
    KEEP_PLURAL,
    LY_NOUNS,
    PARTICIPLES,
    SINGULAR_S,
)

# Closed-class words for the rule-based tagger (Penn Treebank tags, as NLTK's tagger gives).
_CLOSED_CLASS = {
    "DT": "a an the this that these those each every some any no another either neither all both half",
    "CD": "one two three four five six seven eight nine ten eleven twelve twenty hundred thousand dozen",
    "PRP": "i me you he him she her it we us they them myself yourself himself herself itself ourselves "
           "themselves someone somebody something anyone anybody anything everyone everybody everything "
           "nobody nothing",
    "PRP$": "my your his its our their",
    "IN": "about above across after against along alongside amid among around as at atop before behind "
          "below beneath beside besides between beyond by despite during except for from in inside into "
          "like near of off on onto opposite out outside over past per since than through throughout to "
          "toward towards under underneath until up upon via with within without while whilst down",
    "CC": "and or but nor yet plus",
    "WDT": "which whichever",
    "WP": "who whom whose what whatever",
    "WRB": "where when why how",
    "MD": "can could may might must shall should will would",
    "RB": "not very too also just only still almost quite rather really here there now then together "
          "away back outdoors indoors nearby alone ahead apart aside downhill uphill upstairs "
          "downstairs overhead onstage headfirst backward backwards upward upwards downward "
          "downwards so n't",
    "VBZ": "is has does 's",
    "VBP": "are am have do 're",
    "VBD": "was were had did",
    "VB": "be",
    "VBN": "been",
    "VBG": "being having",
    "POS": "'",
}

_TOKEN_RE = r"\w+(?=n't\b)|n't\b|\w+(?:-\w+)*|'\w+|[^\w\s]"  # PTB-like: "dog's" -> dog 's


# --- the tokeniser ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _regexp_tokenizer() -> Any:
    from nltk.tokenize import RegexpTokenizer

    return RegexpTokenizer(_TOKEN_RE)


def regexp_tokenize(text: str) -> list[str]:
    """Treebank-like tokens with no downloaded data: "dog's" -> "dog", "'s"; "t-shirt" kept."""
    return _regexp_tokenizer().tokenize(text)


# --- the rule-based tagger ----------------------------------------------------------------------

def _rule_lexicon() -> dict[str, str]:
    lex: dict[str, str] = {}
    for word in COMMON_VERBS:  # base forms stay a guess until the context decides
        lex[word] = "NN*"
    for word in ADJECTIVES | COLOURS:
        lex[word] = "JJ"
    for word in ING_NOUNS | LY_NOUNS | ABLE_NOUNS:
        lex[word] = "NN"
    for word in KEEP_PLURAL | IRREGULAR_PLURALS.keys():
        lex[word] = "NNS"
    for form in IRREGULAR_VERBS:
        if form not in ("lies", "ties", "dies"):
            lex[form] = "VBZ" if form.endswith("s") else "VBD"
    for word in PARTICIPLES:
        lex[word] = "VBN"
    for word in SINGULAR_S:
        lex[word] = "NN"
    for word in ("bed", "shed", "sled", "seaweed", "speed", "hundred"):
        lex.setdefault(word, "NN")
    for tag, words in _CLOSED_CLASS.items():  # last: closed-class words win
        for word in words.split():
            lex[word] = tag
    lex["red"] = "JJ"
    return lex


_ADJ_SUFFIX = r"^(?:.{2,}ous|.{3,}ful|.{3,}ive|.{4,}(?:able|ible)|.{3,}less|.{4,}ish)$"
# RegexpTagger patterns, tried in order for words outside the lexicon. "NN*"/"NNS*" mark default
# guesses that the context rules may still change.
_SUFFIX_RULES = [
    (r"^\d[\d.,:/-]*(?:st|nd|rd|th|s)?$", "CD"),
    (r"^\W+$", "."),
    (r"^.+-(?:" + "|".join(sorted(COLOURS)) + r")$", "JJ"),  # black-and-white, blue-green
    (r"^.*(?:ness|ment|tion|sion|ship|hood|ism)$", "NN"),
    (r"^[^aeiouy]*ing$", "NN"),  # ring, thing, swing: no vowel before -ing, no gerund
    (r"^.*ing$", "VBG"),
    (r"^[^aeiouy]*ed$", "NN"),  # bed, shed, sled
    (r"^.*eed$", "NN"),  # seed, speed, weed
    (r"^.*ed$", "VBN"),  # captions are in the present: -ed is mostly a participle
    (_ADJ_SUFFIX, "JJ"),
    (r"^.{4,}ly$", "RB"),
    (r"^.*(?:ss|us|is|ics)$", "NN"),  # grass, bus, tennis, gymnastics
    (r"^.*[^s']s$", "NNS*"),
    (r"^.*$", "NN*"),
]

_AUX = frozenset("is are was were be been am being 's 're".split())
_SINGULAR_SUBJECTS = frozenset("he she it someone somebody everyone everybody nobody one who that".split())
_PLURAL_SUBJECTS = frozenset("they we you i who that".split())
_NOUNISH = ("NN", "NN*", "NNS", "NNS*", "JJ", "VBG", "VBN")


class RuleTagger:
    """Penn Treebank tags from word lists, suffixes and the neighbouring words; no data needed.

    NLTK's ``UnigramTagger`` looks words up in closed-class lists (determiners, prepositions,
    pronouns, auxiliaries), colours and common caption adjectives; its backoff ``RegexpTagger``
    guesses from suffixes (-ing, -ed, -ous, -s ...). Context rules then settle the ambiguous cases:
    an "-s" word after a singular noun is a verb when its stem is a common verb ("dog runs"),
    a base form after a plural noun is a verb ("dogs run"), an -ing word after a determiner with
    no noun following is a noun ("a large gathering").
    """

    def __init__(self) -> None:
        from nltk.tag import RegexpTagger, UnigramTagger

        self._tagger = UnigramTagger(model=_rule_lexicon(), backoff=RegexpTagger(_SUFFIX_RULES))
        # lexicon and suffixes look at one word only: tag each distinct word once
        self._word_tag = lru_cache(maxsize=1 << 16)(self._word_tag_uncached)

    def _word_tag_uncached(self, word: str) -> str:
        return self._tagger.tag([word])[0][1] or "NN*"

    def tag(self, tokens: list[str]) -> list[tuple[str, str]]:
        words = [t.lower() for t in tokens]
        tags = [self._word_tag(w) for w in words]
        _context_rules(words, tags)
        return [(tok, t.rstrip("*")) for tok, t in zip(tokens, tags)]


def _context_rules(words: list[str], tags: list[str]) -> None:
    """Settle the rule tagger's ambiguous guesses from the neighbouring words, in place."""
    last_verb = ""
    n = len(words)
    for i, (w, t) in enumerate(zip(words, tags)):
        j = i - 1
        while j >= 0 and tags[j] == "RB":  # "a dog quickly runs": look past adverbs
            j -= 1
        prev_w, prev_t = (words[j], tags[j]) if j >= 0 else ("", "")
        next_t = tags[i + 1] if i + 1 < n else ""
        coordinated = prev_w in ("and", "then", "or")
        if t == "NNS*":
            stem = verb_lemma(w)
            is_verb = stem != w and stem in COMMON_VERBS
            singular_subject = prev_t in ("NN", "NN*", "NNP") or prev_w in _SINGULAR_SUBJECTS
            # "a boy in swim trunks jumps into": after a plural noun, a verb if a new phrase follows
            after_plural = prev_t in ("NNS", "NNS*") and next_t in ("IN", "DT", "PRP$", "RB", "CD", "TO")
            verb_here = singular_subject or after_plural or (coordinated and last_verb == "VBZ")
            t = "VBZ" if is_verb and verb_here else "NNS"
        elif t == "NN*":
            verbish = w in COMMON_VERBS
            plural_subject = prev_t in ("NNS", "NNS*") or prev_w in _PLURAL_SUBJECTS
            if prev_t == "MD" or prev_w == "to":
                t = "VB" if verbish else "NN"
            elif verbish and (plural_subject or (coordinated and last_verb == "VBP")):
                t = "VBP"
            else:
                t = "NN"
        elif t == "VBG" or (t == "NN" and w in ING_NOUNS):
            if prev_w in _AUX:
                t = "VBG"  # "is building a sandcastle"
            elif t == "VBG" and prev_t in ("DT", "PRP$", "JJ", "CD") and next_t not in _NOUNISH:
                t = "NN"  # "a large gathering", "the landing"
        tags[i] = t
        if t.startswith("VB") and t not in ("VBG", "VBN"):
            last_verb = t

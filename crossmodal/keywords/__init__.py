"""Keywords and short phrases from captions, so one-word ("dog") and two-word ("black dog") queries
have training text of their own.

One method, deterministic and with no downloaded data. One module per concept, imported in one
direction: ``words`` (the English word lists), ``lemmas`` (LemmInflect's lemmas, with the word
lists' exceptions), ``tagger`` (the tokeniser and ``RuleTagger``), ``phrases`` (what is taken from a
caption, and the samples of a caption set) and ``samples`` (``KeywordSample`` and the TSV keyword
file). Every name is importable from ``crossmodal.keywords``.
"""
from crossmodal.keywords.lemmas import noun_lemma, verb_lemma
from crossmodal.keywords.phrases import (
    RELATIONAL_OF_NOUNS,
    SKIP_WORDS,
    augment_captions,
    caption_key,
    extract_phrases,
    keyword_work_dir,
    leading_phrase,
    make_keyword_file,
    method,
    nouns_of,
    phrase_counts,
)
from crossmodal.keywords.samples import KEYWORDS_HEADER, KeywordSample, read_keyword_samples, write_keyword_samples
from crossmodal.keywords.tagger import RuleTagger, regexp_tokenize
from crossmodal.keywords.words import (
    ABLE_NOUNS,
    ADJECTIVES,
    CAPTION_STOPWORDS,
    COLOURS,
    COMMON_VERBS,
    ENGLISH_STOPWORDS,
    ING_NOUNS,
    IRREGULAR_PLURALS,
    IRREGULAR_VERBS,
    KEEP_PLURAL,
    LY_NOUNS,
    PARTICIPLES,
    SINGULAR_S,
)

__all__ = [
    # phrases
    "extract_phrases", "leading_phrase", "nouns_of", "augment_captions", "phrase_counts", "caption_key",
    "RELATIONAL_OF_NOUNS",
    "SKIP_WORDS", "make_keyword_file", "keyword_work_dir", "method",
    # tagger and lemmas
    "RuleTagger", "regexp_tokenize", "noun_lemma", "verb_lemma",
    # words
    "ENGLISH_STOPWORDS", "CAPTION_STOPWORDS", "KEEP_PLURAL", "IRREGULAR_PLURALS", "SINGULAR_S", "IRREGULAR_VERBS",
    "COMMON_VERBS", "COLOURS", "ADJECTIVES", "PARTICIPLES", "ING_NOUNS", "LY_NOUNS", "ABLE_NOUNS",
    # samples
    "KeywordSample", "write_keyword_samples", "read_keyword_samples", "KEYWORDS_HEADER",
]

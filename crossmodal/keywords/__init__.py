"""Keywords and short phrases from captions, so one-word ("dog") and two-word ("black dog") queries
have training text of their own.

One module per concept: ``phrases`` (what is taken from a caption, and the samples of a caption
set), ``nltk_data`` (NLTK's data and ``load_keyword_tools``, which picks the tools and logs which),
``rule_tagger`` (the rule method, which needs no downloaded data) and ``samples`` (``KeywordSample``
and the TSV keyword file). Every name is importable from ``crossmodal.keywords``.
"""
from crossmodal.keywords.nltk_data import (
    DOWNLOAD_TIMEOUT_S,
    PUNKT_PACKAGE,
    STOPWORDS_PACKAGE,
    SYSTEM_WORDNET_DIR,
    TAGGER_PACKAGE,
    WORDNET_LEXNAMES,
    WORDNET_PACKAGE,
    KeywordTools,
    Tagger,
    load_keyword_tools,
)
from crossmodal.keywords.phrases import (
    RELATIONAL_OF_NOUNS,
    augment_captions,
    caption_key,
    extract_phrases,
    keyword_work_dir,
    make_keyword_file,
    nouns_of,
    phrase_counts,
)
from crossmodal.keywords.rule_tagger import (
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
    RuleTagger,
    regexp_tokenize,
    rule_noun_lemma,
    rule_verb_lemma,
)
from crossmodal.keywords.samples import KEYWORDS_HEADER, KeywordSample, read_keyword_samples, write_keyword_samples

__all__ = [
    # phrases
    "extract_phrases", "nouns_of", "augment_captions", "phrase_counts", "caption_key", "RELATIONAL_OF_NOUNS",
    "make_keyword_file", "keyword_work_dir",
    # nltk_data
    "load_keyword_tools", "KeywordTools", "Tagger", "SYSTEM_WORDNET_DIR", "DOWNLOAD_TIMEOUT_S", "TAGGER_PACKAGE",
    "PUNKT_PACKAGE", "STOPWORDS_PACKAGE", "WORDNET_PACKAGE", "WORDNET_LEXNAMES",
    # rule_tagger
    "RuleTagger", "regexp_tokenize", "rule_noun_lemma", "rule_verb_lemma", "ENGLISH_STOPWORDS",
    "CAPTION_STOPWORDS", "KEEP_PLURAL", "IRREGULAR_PLURALS", "SINGULAR_S", "IRREGULAR_VERBS", "COMMON_VERBS",
    "COLOURS", "ADJECTIVES", "PARTICIPLES", "ING_NOUNS", "LY_NOUNS", "ABLE_NOUNS",
    # samples
    "KeywordSample", "write_keyword_samples", "read_keyword_samples", "KEYWORDS_HEADER",
]

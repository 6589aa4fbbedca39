#!/usr/bin/env python
"""Stage 3: keyword samples from the captions, so one-word and short-phrase queries work.

Every caption yields nouns ("dog"), adjective + noun pairs ("black dog"), noun compounds
("tennis ball") and verbs ("running"); each distinct (image, phrase) becomes one line
"image<TAB>caption_key<TAB>phrase" of the keyword file that extract_aug_text_features.py encodes.
One method on every machine, with no downloaded data: a rule tagger built on NLTK, LemmInflect's
lemmas and built-in stopwords (crossmodal/keywords/); the keyword file records it. Resumable: a
killed run continues where it stopped.
"""
from __future__ import annotations

import logging
import sys
import time

from crossmodal import cli

cli.prepare_process()

from crossmodal.captions import DatasetError, read_captions  # noqa: E402
from crossmodal.keywords import make_keyword_file, method, phrase_counts  # noqa: E402

import config  # noqa: E402

log = logging.getLogger("sentence_augment")

TOP_PHRASES = 10


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("captions", "work-dir", "out",
            out_help="keyword file to write (default: the one of this --work-dir's layout, "
                     "data/flickr30k_keywords_augmented.txt without one)")
    args = p.parse(argv)
    out = args.out or args.layout.keywords_file
    try:
        captions = read_captions(args.captions)
        log.info("keywords: %s", method())
        start = time.perf_counter()
        samples = make_keyword_file(out, captions, progress=True)
        seconds = time.perf_counter() - start
    except (DatasetError, OSError) as err:
        log.error("%s", err)
        return 2
    counts = phrase_counts(samples)
    n_images = max(len(captions.images), 1)
    log.info("%d captions of %d images -> %d samples (%.1f per image), %d distinct phrases, in %.1fs",
             len(captions.captions), len(captions.images), len(samples), len(samples) / n_images,
             len(counts), seconds)
    log.info("top phrases (images): %s",
             ", ".join(f"{phrase} ({n})" for phrase, n in list(counts.items())[:TOP_PHRASES]))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

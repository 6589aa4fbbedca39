"""Keywords and short phrases from captions, so one-word ("dog") and two-word ("black dog") queries
have training text of their own.

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

The keyword file is TSV: ``image<TAB>caption_key<TAB>phrase``, one sample per distinct
(image, phrase), the source caption being the first one that yields the phrase.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

from crossmodal.atomic_io import atomic_open
from crossmodal.captions import Caption, CaptionSet, DatasetError

log = logging.getLogger("keywords")

SYSTEM_WORDNET_DIR = Path("/usr/share/wordnet")  # Debian/Ubuntu package wordnet-base
DOWNLOAD_TIMEOUT_S = 10.0  # per download (NLTK's own is 120 s); offline they fail at once anyway

# NLTK data packages (NLTK >= 3.9 names; older NLTK uses the pickled tagger and "punkt").
TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
PUNKT_PACKAGE = "punkt_tab"
STOPWORDS_PACKAGE = "stopwords"
WORDNET_PACKAGE = "wordnet"
KEYWORDS_HEADER = "# image\tcaption\tphrase"

# --- word lists ---------------------------------------------------------------------------------

# Generic English function words, used when NLTK's stopword corpus is absent (close to it).
ENGLISH_STOPWORDS = frozenset("""
a about above after again against ain all am an and any are aren as at be because been before
being below between both but by can couldn could d did didn do does doesn doing don down during
each few for from further had hadn has hasn have haven having he her here hers herself him himself
his how i if in into is isn it its itself just ll m ma me mightn more most mustn my myself needn
no nor not now o of off on once only or other our ours ourselves out over own re s same shan she
should shouldn so some such t than that the their theirs them themselves then there these they
this those through to too under until up ve very was wasn we were weren what when where which
while who whom why will with won wouldn y you your yours yourself yourselves
""".split())

# Added to either list: words that are grammatically content words but say nothing about a picture.
CAPTION_STOPWORDS = frozenset("""
also another anyone anything anybody around away back near next onto toward towards upon whilst
everyone everything everybody someone something somebody nobody nothing many much several various
one two three four five six seven eight nine ten eleven twelve dozen hundred thousand
thing things stuff way
get gets got getting go goes going gone went seem seems seemed appear appears appeared let lets
be being been become becomes make makes made take takes took taking do does did doing done
try tries tried trying use uses used using wear wears wore worn wearing
""".split())

# Nouns whose singular means something else ("glass", "short", "jean") or that are plural only.
KEEP_PLURAL = frozenset("""
glasses sunglasses eyeglasses goggles jeans pants trousers shorts trunks tights leggings overalls
sweatpants pajamas pyjamas clothes scissors binoculars suspenders stairs woods news species series
people police cattle headquarters outskirts surroundings belongings
""".split())

IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
    "geese": "goose", "mice": "mouse", "oxen": "ox", "firemen": "fireman", "policemen": "policeman",
    "fishermen": "fisherman", "gentlemen": "gentleman", "businessmen": "businessman",
    "sportsmen": "sportsman", "cowmen": "cowman", "dice": "die", "lice": "louse",
    "leaves": "leaf", "wolves": "wolf", "knives": "knife", "wives": "wife", "lives": "life",
    "shelves": "shelf", "calves": "calf", "halves": "half", "loaves": "loaf", "scarves": "scarf",
    "hooves": "hoof", "thieves": "thief", "elves": "elf", "selves": "self",
    "buses": "bus", "gases": "gas", "lenses": "lens", "canvases": "canvas", "atlases": "atlas",
    "tomatoes": "tomato", "potatoes": "potato", "heroes": "hero", "volcanoes": "volcano",
    "mangoes": "mango", "echoes": "echo", "dominoes": "domino", "torpedoes": "torpedo",
    "cookies": "cookie", "movies": "movie", "selfies": "selfie", "goalies": "goalie",
    "hippies": "hippie", "brownies": "brownie", "zombies": "zombie", "hoodies": "hoodie",
    "beanies": "beanie", "collies": "collie", "smoothies": "smoothie", "birdies": "birdie",
    "veggies": "veggie", "rookies": "rookie", "prairies": "prairie", "calories": "calorie",
    "skis": "ski", "bikinis": "bikini", "taxis": "taxi", "kiwis": "kiwi", "safaris": "safari",
}

# Singular nouns ending in -s that no rule would recognise ("-ss", "-us", "-is" are handled).
SINGULAR_S = frozenset("christmas xmas canvas atlas gas lens chaos cosmos suds crossbones measles".split())

# Irregular verb forms (and "be/have/do" forms) -> lemma.
IRREGULAR_VERBS = {
    "is": "be", "are": "be", "was": "be", "were": "be", "am": "be", "'s": "be", "'re": "be",
    "has": "have", "had": "have", "does": "do", "did": "do", "goes": "go", "went": "go",
    "ran": "run", "sat": "sit", "stood": "stand", "lay": "lie", "lies": "lie", "ate": "eat",
    "drank": "drink", "swam": "swim", "rode": "ride", "threw": "throw", "caught": "catch",
    "held": "hold", "wore": "wear", "fell": "fall", "flew": "fly", "dove": "dive", "took": "take",
    "made": "make", "saw": "see", "sang": "sing", "hit": "hit", "bit": "bite", "led": "lead",
    "leapt": "leap", "slid": "slide", "swung": "swing", "spun": "spin", "dug": "dig", "hung": "hang",
    "built": "build", "bought": "buy", "brought": "bring", "fought": "fight", "knelt": "kneel",
    "got": "get", "gave": "give", "began": "begin", "broke": "break", "drew": "draw", "drove": "drive",
    "came": "come", "ties": "tie", "dies": "die",
}

# Base forms of verbs common in captions: they settle "-s" words (verb or plural noun?) and base
# forms after a plural subject in the rule-based tagger. Many are nouns too ("ride", "swing").
COMMON_VERBS = frozenset("""
wear run play stand jump sit hold walk ride look climb smile swim carry do pose watch race take
lay chase perform fly try hang make talk go eat swing leap dance fight skateboard splash slide
wait bathe throw get catch overlook ski drink fish pull lean lie laugh shop surf read come bite
fall skate set shake drive park kick dive hug smoke push use hike wrestle blow stare cross
snowboard sleep attempt point stick kiss wave chew face roll have show wade rest paint paddle
reach shoot move float dig sing hit grind lick put give kneel prepare balance pass bike compete
land write enjoy cover spin rollerblade kayak crash row jog turn touch bark fetch help sniff
surround work bounce train pet leave bend waterski practice crouch scale gather spray pick follow
tackle feed pour travel retrieve speak listen march raise raft break box cry stop grab open close
build cook sell buy draw wash clean hide crawl squat tug tow bowl pitch serve lift load drag
growl yell shout scream cheer clap relax nap sunbathe sail canoe snorkel hunt golf skip hop
trot gallop graze herd lead guide wander explore observe examine check inspect sweep mow
rake shovel plant water wade kneel stretch exercise lift swim dunk block score defend attack
race steer pedal sled toboggan sing strum drum blow hold greet meet celebrate marry kiss hug
laugh giggle smile frown stare gaze glance peer peek watch see hear smell taste feel
toss flip glide interact pretend operate emerge squirt ascend descend create cut share ask aim
drop juggle guard embrace dangle participate beg soak reflect dribble melt yawn carve teach shine
tumble soar fill twist challenge windsurf spar squeeze wrap gnaw flow snarl parachute rub poke
twirl scratch converse strike chat punch hover offer sew display cling pierce grin battle navigate
rush assist rappel lounge return socialize admire struggle learn search howl gesture spread pounce
pay perform enjoy follow appear enter collide celebrate engage avoid examine prevent investigate
""".split())

COLOURS = frozenset("""
black white red blue green yellow orange pink purple brown gray grey silver gold golden tan beige
maroon navy turquoise teal violet blond blonde brunette dark light bright pale colorful colourful
multicolored multicoloured striped plaid checkered spotted
""".split())

ADJECTIVES = frozenset("""
big small large little tiny huge giant tall short long young old elderly older younger new wet
dry cold hot warm cool high low deep shallow wide narrow thick thin fat skinny bald curly straight
fancy formal casual male female adult teenage asian african american indian chinese japanese
mexican european german french italian irish english british spanish korean native wooden woolen
woollen outdoor indoor urban rural public local nice beautiful cute ugly strange different whole
full empty main shirtless barefoot topless naked wild fresh clean dirty calm quiet loud bare busy
happy sad angry funny crazy silly pretty heavy muddy sandy rocky grassy snowy sunny cloudy rainy
hairy shiny fluffy furry dusty windy foggy icy leafy wavy messy shaggy sleepy stormy blurry
steep flat smooth rough soft hard sharp fast slow late early only lone single double
elderly curly hilly friendly lovely lonely chilly smelly frilly wobbly sparkly grizzly woolly
bubbly cuddly lively costly deadly sly ready open airborne underwater upside-down midair
professional traditional electric electronic artificial tropical plastic
smaller larger bigger higher taller shorter longer darker lighter brighter faster slower
eastern western northern southern asleep floral murky sheer athletic distant skimpy scenic
visible tight identical elaborate flowery bouncy fuzzy muscular multicolor industrial similar
rusty alike homemade suburban chubby uncut choppy dim medieval digital swampy residential bumpy
watery gymnastic scary acrobatic unusual ornate elegant brindle scruffy mossy misty unhappy odd
stripy mechanical spiky unique curvy wintry sparse shady vast fiery intense
""".split())

# Irregular past participles: modifiers before a noun ("fallen tree", "frozen lake").
PARTICIPLES = frozenset("""
fallen thrown taken frozen broken driven written worn woven drawn grown overgrown torn seen shown
ridden strewn bitten given hidden beaten eaten sung swum done gone stuck laid clad flung lit
""".split())

# Words ending in -ing / -ly / -able that are nouns.
ING_NOUNS = frozenset("""
building clothing ceiling railing painting wedding evening morning ring king thing string wing
swing spring sibling awning stocking stockings earring earrings sling pudding icing lightning
siding bedding frosting piping bunting viking dumpling duckling seedling sapling darling herring
stuffing ping-pong lettering flooring carving drawing opening landing gathering crossing parking
setting ping
""".split())
LY_NOUNS = frozenset("family belly jelly lily fly butterfly dragonfly rally bully assembly supply ally holly gully".split())
ABLE_NOUNS = frozenset("vegetable vegetables turntable turntables timetable constable".split())

# "in front of", "on top of", "a lot of", "a set of stairs": the noun before "of" is no keyword.
RELATIONAL_OF_NOUNS = frozenset("""
front top middle side edge end bottom back center centre lot lots bunch couple pair kind sort
type piece part rest number variety series set sides flight
""".split())

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

_PHRASE_WORD = re.compile(r"^[a-z]+(?:-[a-z]+)*$")  # a keyword word: ASCII letters, inner hyphens
_TOKEN_RE = r"\w+(?=n't\b)|n't\b|\w+(?:-\w+)*|'\w+|[^\w\s]"  # PTB-like: "dog's" -> dog 's


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
    """One quiet ``nltk.download`` with a short network timeout; False on any failure."""
    import nltk

    downloader = getattr(nltk, "downloader", None)
    old_timeout = getattr(downloader, "NETWORK_TIMEOUT", None)
    old_socket = socket.getdefaulttimeout()
    if old_timeout is not None:
        downloader.NETWORK_TIMEOUT = DOWNLOAD_TIMEOUT_S  # read at call time by NLTK's urlopen calls
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # older NLTK passes no timeout at all
    sink = io.StringIO()
    try:
        # quiet=True still prints errors: keep them off the terminal, the one log line says it all
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return bool(nltk.download(package, quiet=True, raise_on_error=False, print_error_to=sink))
    except Exception:  # noqa: BLE001 - any downloader failure means "use the fallback"
        return False
    finally:
        socket.setdefaulttimeout(old_socket)
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
    description = f"{method}: {tag_desc} + {lemma_desc} + {stop_desc} + {tok_desc} ({why})"
    log.info("method %s", description)  # the one line saying which method ran, and why
    return KeywordTools(method, description, tokenize, tagger, stopwords, noun_lemma, verb_lemma,
                        stopwords | CAPTION_STOPWORDS)


def _read_stopwords(pointer: Any) -> list[str]:
    with pointer.open() as f:  # an NLTK path pointer (plain file or zip member)
        text = f.read()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [w.strip().lower() for w in text.splitlines() if w.strip()]


@lru_cache(maxsize=1)
def _regexp_tokenizer() -> Any:
    from nltk.tokenize import RegexpTokenizer

    return RegexpTokenizer(_TOKEN_RE)


def regexp_tokenize(text: str) -> list[str]:
    """Treebank-like tokens with no downloaded data: "dog's" -> "dog", "'s"; "t-shirt" kept."""
    return _regexp_tokenizer().tokenize(text)


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


def rule_noun_lemma(word: str) -> str:
    """Plural -> singular by English spelling rules, with the common exceptions."""
    if word in KEEP_PLURAL or word in SINGULAR_S:
        return word
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is", "ics", "ous")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"  # puppies, ladies (cookies, movies: IRREGULAR_PLURALS)
    if word.endswith(("sses", "xes", "zzes", "ches", "shes")):
        return word[:-2]  # dresses, boxes, benches, bushes
    return word[:-1]  # dogs, horses, shoes, gloves


def rule_verb_lemma(word: str) -> str:
    """A finite verb form -> base form; a form the rules cannot undo safely is kept as is."""
    if word in IRREGULAR_VERBS:
        return IRREGULAR_VERBS[word]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        if word.endswith("ies") and len(word) > 4:
            return word[:-3] + "y"  # carries, tries
        if word.endswith(("sses", "xes", "zzes", "ches", "shes", "oes")):
            return word[:-2]  # watches, kisses, goes
        if word.endswith("es") and word[:-2] in COMMON_VERBS and word[:-1] not in COMMON_VERBS:
            return word[:-2]
        return word[:-1]  # runs, rides, uses
    if word.endswith("ed") and len(word) > 4:
        if word.endswith("ied"):
            candidates = [word[:-3] + "y"]  # carried
        else:
            candidates = [word[:-2], word[:-1]]  # jumped, smiled
            if len(word) > 5 and word[-3] == word[-4]:
                candidates.append(word[:-3])  # stopped
        for stem in candidates:
            if stem in COMMON_VERBS:
                return stem
    return word


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
# guesses that the context rules (or WordNet) may still change.
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
    no noun following is a noun ("a large gathering"). With WordNet, an unknown word that is no
    noun there becomes an adjective or verb.
    """

    def __init__(self, wordnet: Any | None = None):
        from nltk.tag import RegexpTagger, UnigramTagger

        self._tagger = UnigramTagger(model=_rule_lexicon(), backoff=RegexpTagger(_SUFFIX_RULES))
        self._wordnet = wordnet
        # lexicon and suffixes look at one word only: tag each distinct word once (10x faster)
        self._word_tag = lru_cache(maxsize=1 << 16)(self._word_tag_uncached)

    def _word_tag_uncached(self, word: str) -> str:
        tag = self._tagger.tag([word])[0][1] or "NN*"
        wn = self._wordnet
        if wn is None or tag not in ("NN*", "NNS*") or word in COMMON_VERBS:
            return tag
        if wn._morphy(word, "n"):
            return tag
        if tag == "NN*" and (wn._morphy(word, "a") or wn._morphy(word, "s")):
            return "JJ"
        if wn._morphy(word, "v"):
            return "VBZ" if tag == "NNS*" else "VB*"
        return tag

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
            stem = rule_verb_lemma(w)
            is_verb = stem != w and stem in COMMON_VERBS
            singular_subject = prev_t in ("NN", "NN*", "NNP") or prev_w in _SINGULAR_SUBJECTS
            # "a boy in swim trunks jumps into": after a plural noun, a verb if a new phrase follows
            after_plural = prev_t in ("NNS", "NNS*") and next_t in ("IN", "DT", "PRP$", "RB", "CD", "TO")
            t = "VBZ" if is_verb and (singular_subject or after_plural or (coordinated and last_verb == "VBZ")) else "NNS"
        elif t in ("NN*", "VB*"):
            verbish = w in COMMON_VERBS or t == "VB*"
            plural_subject = prev_t in ("NNS", "NNS*") or prev_w in _PLURAL_SUBJECTS
            if prev_t == "MD" or prev_w == "to":
                t = "VB" if verbish else "NN"
            elif verbish and (plural_subject or (coordinated and last_verb == "VBP")):
                t = "VBP"
            elif t == "VB*":
                t = "VB" if prev_t.startswith("VB") and prev_t not in ("VBG", "VBN") else "NN"
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


# --- phrases ------------------------------------------------------------------------------------

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


def _phrases_with_kind(caption: str, tools: KeywordTools) -> list[tuple[str, str]]:
    """(phrase, kind) pairs, kind in noun | verb | adj_noun | compound, in the documented order."""
    tokens = tools.tokenize(caption)
    if not tokens:
        return []
    tagged = [(w.lower(), t) for w, t in tools.tagger.tag(tokens)]
    classes = _classify(tagged, tools.skip_words)
    found: list[tuple[int, int, int, str, str]] = []  # (first word, -words, order, phrase, kind)

    def add(start: int, phrase: str, kind: str) -> None:
        words = phrase.split()
        if all(_PHRASE_WORD.match(p) and p not in tools.skip_words for p in words):
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
            _chunk_phrases(i, tagged[i:j], classes[i:j], tools, add)
            i = j
            continue
        if c == _VERB:
            w, t = tagged[i]
            if t == "VBG":
                add(i, w, "verb")
            elif t != "VBN":
                add(i, tools.verb_lemma(w), "verb")
        i += 1
    found.sort()
    out: dict[str, str] = {}
    for *_, phrase, kind in found:
        out.setdefault(phrase, kind)
    return list(out.items())


def _chunk_phrases(offset: int, tagged: Sequence[tuple[str, str]], classes: Sequence[str],
                   tools: KeywordTools, add: Callable[[int, str, str], None]) -> None:
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
            head = tools.noun_lemma(run[-1])
            for m, word in enumerate(run[:-1]):
                add(offset + start + m, tools.noun_lemma(word), "noun")
            add(offset + k - 1, head, "noun")
            if len(run) >= 2:  # the modifying noun as written: "sports car", "tennis ball"
                add(offset + k - 2, f"{run[-2]} {head}", "compound")
            for pos, mod in mods:
                add(pos, f"{mod} {head}", "adj_noun")
            mods = []
        else:  # "and"/"," between modifiers
            k += 1


def extract_phrases(caption: str, tools: KeywordTools) -> list[str]:
    """Keywords and short phrases of one caption (see the module docstring for what and in which order)."""
    return [p for p, _ in _phrases_with_kind(caption, tools)]


def nouns_of(caption: str, tools: KeywordTools) -> list[str]:
    """The caption's nouns, lemmatised (evaluation's one-word queries)."""
    return [p for p, kind in _phrases_with_kind(caption, tools) if kind == "noun"]


# --- samples and the keyword file ---------------------------------------------------------------

@dataclass(frozen=True)
class KeywordSample:
    image: str  # "1000092795.jpg"
    caption_key: str  # "1000092795.jpg#0": the caption the phrase came from
    phrase: str  # "black dog"


def caption_key(caption: Caption) -> str:
    return caption.key


def augment_captions(
    captions: CaptionSet,
    tools: KeywordTools,
    progress: bool | Callable[[Iterable[Caption]], Iterable[Caption]] = False,
) -> list[KeywordSample]:
    """One sample per distinct (image, phrase), from the first caption (file order) yielding it.

    ``progress``: True shows a tqdm bar over the captions, or pass a wrapper of your own.
    """
    items: Iterable[Caption] = captions.captions
    if progress is True:
        from tqdm import tqdm

        items = tqdm(items, total=len(captions.captions), unit="caption", desc="keywords")
    elif callable(progress):
        items = progress(items)
    seen: set[tuple[str, str]] = set()
    samples: list[KeywordSample] = []
    for cap in items:
        key = caption_key(cap)
        for phrase in extract_phrases(cap.text, tools):
            if (cap.image, phrase) not in seen:
                seen.add((cap.image, phrase))
                samples.append(KeywordSample(cap.image, key, phrase))
    return samples


def phrase_counts(samples: Iterable[KeywordSample]) -> dict[str, int]:
    """Images per phrase, most frequent first (ties alphabetical)."""
    counts = Counter(s.phrase for s in samples)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_keyword_samples(path: str | os.PathLike, samples: Iterable[KeywordSample],
                          method: str | None = None) -> int:
    """Write the TSV keyword file atomically (``method`` goes in a comment); returns the count."""
    count = 0
    with atomic_open(path, "w") as f:
        f.write(KEYWORDS_HEADER + "\n")
        if method:
            f.write(f"# keywords: {' '.join(method.split())}\n")
        for s in samples:
            fields = (s.image, s.caption_key, s.phrase)
            if any(not x.strip() or any(ch in x for ch in "\t\r\n") for x in fields):
                raise ValueError(f"keyword sample with an empty field or a tab/newline: {s!r}")
            f.write("\t".join(fields) + "\n")
            count += 1
    return count


def read_keyword_samples(path: str | os.PathLike) -> list[KeywordSample]:
    """Read a keyword file; a malformed or repeated line raises DatasetError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"keyword file not found: {path} (sentence_augment.py writes it)")
    samples: list[KeywordSample] = []
    seen: dict[tuple[str, str], int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not all(x.strip() for x in fields):
                raise DatasetError(
                    f"{path}:{lineno}: expected 'image<TAB>caption_key<TAB>phrase', got {line[:80]!r}"
                )
            image, key, phrase = fields
            key_image, _, number = key.rpartition("#")
            if key_image != image or not number.isdigit():
                raise DatasetError(f"{path}:{lineno}: caption key {key!r} is not '{image}#<n>'")
            if (image, phrase) in seen:
                raise DatasetError(
                    f"{path}:{lineno}: phrase {phrase!r} of {image} repeats line {seen[image, phrase]}"
                )
            seen[image, phrase] = lineno
            samples.append(KeywordSample(image, key, phrase))
    return samples

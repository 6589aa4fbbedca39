"""The rule method, which needs no downloaded data: the English word lists (stopwords, irregular
forms, common caption verbs and adjectives), a regular-expression tokeniser, rule-based
lemmatisers and ``RuleTagger``. ``load_keyword_tools`` uses each piece whose NLTK counterpart is
missing; ``ENGLISH_STOPWORDS`` and ``CAPTION_STOPWORDS`` decide what never becomes a phrase.

The tagger: NLTK's ``UnigramTagger`` over closed-class word lists, backed by a ``RegexpTagger``
with suffix rules, then a few context rules (see ``RuleTagger``). The lemmatisers undo English
plural and verb endings, with the exceptions listed here.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

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
LY_NOUNS = frozenset("family belly jelly lily fly butterfly dragonfly rally bully assembly supply ally holly "
                     "gully".split())
ABLE_NOUNS = frozenset("vegetable vegetables turntable turntables timetable constable".split())


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


# --- rule-based lemmatisers ---------------------------------------------------------------------

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
        # lexicon and suffixes look at one word only: tag each distinct word once
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
            verb_here = singular_subject or after_plural or (coordinated and last_verb == "VBZ")
            t = "VBZ" if is_verb and verb_here else "NNS"
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

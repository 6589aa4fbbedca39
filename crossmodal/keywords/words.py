"""The English word lists of the keyword stage: stopwords, irregular forms, plural-only nouns, and the
common caption verbs and adjectives the tagger knows. Plain data; ``tagger`` and ``lemmas`` read them."""
from __future__ import annotations

# Generic English function words (close to NLTK's English stopword list).
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

# Words that are grammatically content words but say nothing about a picture.
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
people police cattle headquarters outskirts surroundings belongings graffiti
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

"""The search query language, shared by the page, the command line and the API.

``parse_query`` splits what a user typed into the description that is embedded (``Query.text``)
and the operators around it; ``Query.describe`` writes the query back in canonical form (what the
page shows as "understood as"), and parsing that gives the same ``Query``. The grammar is
documented once, in ``GRAMMAR``, which the command-line help and the page show.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

GRAMMAR = """\
Query language (the same on the page, the command line and the API):

  a dog on a beach       the description; photos are ranked by how well they match it
  "red car"              a quoted phrase stays in the description as written
  -grass  -"a red car"   leave out photos that match this word or phrase
  after:2019-06          taken on or after the start of that period (here 1 June 2019)
  before:2020-01-31      taken before the start of that period (here up to 30 January 2020 included)
  date:2021              taken during that period (here the whole of 2021)
  in:Holidays/2019       in that folder, at any depth: its names are consecutive folder names of
  folder:"Summer trip"   the photo's path (case-insensitive), so in:2019 also finds Trips/2019/x.jpg
  sort:date  sort:-date  the matches oldest first / newest first (default: best match first)

Dates are YYYY, YYYY-MM or YYYY-MM-DD: the date a photo was taken (its EXIF DateTimeOriginal,
else the file's modification time). Several date operators narrow the range together; several
folders match a photo in any of them. A query of operators alone (in:Holidays sort:date) lists
the photos that pass the filters. Operator names are case-insensitive.
"""

SORTS = ("relevance", "date", "-date")
Sort = Literal["relevance", "date", "-date"]
DATE_KEYS = ("after", "before", "date")
FOLDER_KEYS = ("in", "folder")
KEYS = DATE_KEYS + FOLDER_KEYS + ("sort",)

# One token at a time: an optional "-", then an operator (key:value, the value possibly quoted), a
# quoted phrase or a bare word. A missing closing quote closes at the end of the query, and an
# unknown key:value ("http://...", "ratio:16:9") is an ordinary word.
_TOKEN = re.compile(r"""
    (?P<neg>-)?
    (?:
        (?P<key>(?i:KEYS)):(?:"(?P<quoted_value>[^"]*)"?|(?P<value>[^\s"]*))
      | "(?P<phrase>[^"]*)"?
      | (?P<word>[^\s"]+)
    )""".replace("KEYS", "|".join(KEYS)), re.VERBOSE)
_DATE = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?", re.ASCII)


@dataclass(frozen=True)
class Query:
    """A parsed query. ``text`` is the description to embed (empty for a filters-only query)."""

    text: str = ""
    exclude_words: tuple[str, ...] = ()
    exclude_phrases: tuple[str, ...] = ()
    after: date | None = None  # taken on or after this day
    before: date | None = None  # taken before this day (exclusive)
    folders: tuple[str, ...] = ()  # normalised folder filters ("Holidays/2019"); a photo in any passes
    sort: Sort = "relevance"

    @property
    def has_filters(self) -> bool:
        return bool(self.after or self.before or self.folders)

    @property
    def excludes(self) -> tuple[str, ...]:
        """Excluded words and phrases together."""
        return self.exclude_words + self.exclude_phrases

    def in_date_range(self, taken: date | datetime) -> bool:
        """Whether a photo taken at ``taken`` passes the date operators."""
        day = taken.date() if isinstance(taken, datetime) else taken
        return (self.after is None or day >= self.after) and (self.before is None or day < self.before)

    def in_folders(self, rel_path: str) -> bool:
        """Whether the photo at ``rel_path`` ("/" or "\\" separated, with the folder names it may be
        found by: below an indexed folder, that folder's own name first) is in one of the folders:
        the folder's names are consecutive folder names of the path, compared case-insensitively (and
        with runs of spaces as one). True without folder operators."""
        if not self.folders:
            return True
        parents = [_name_key(p) for p in re.split(r"[/\\]+", rel_path.strip("/\\"))[:-1]]
        for folder in self.folders:
            want = [_name_key(p) for p in folder.split("/")]
            n = len(want)
            if any(parents[i : i + n] == want for i in range(len(parents) - n + 1)):
                return True
        return False

    def describe(self) -> str:
        """The query in canonical form: parse_query(q.describe()) == q."""
        parts = [self.text] if self.text else []
        parts += [f"-{w}" for w in self.exclude_words]
        parts += [f'-"{p}"' for p in self.exclude_phrases]
        if self.after:
            parts.append(f"after:{self.after.isoformat()}")
        if self.before:
            parts.append(f"before:{self.before.isoformat()}")
        parts += [f'in:"{f}"' if re.search(r"\s", f) else f"in:{f}" for f in self.folders]
        if self.sort != "relevance":
            parts.append(f"sort:{self.sort}")
        return " ".join(parts)


def _name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _period(value: str, token: str) -> tuple[date, date | None]:
    """The first day of the period a YYYY, YYYY-MM or YYYY-MM-DD value names, and the first day after
    it (None after the last day there is, 9999-12-31: the period runs to the end of time)."""
    m = _DATE.fullmatch(value)
    if not m:
        raise ValueError(f"{token}: expected a date as YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = int(m[1]), m[2], m[3]
    if not 1 <= year <= 9999:
        raise ValueError(f"{token}: a year from 1 to 9999")
    try:
        if day is not None:
            start = date(year, int(month), int(day))
        elif month is not None:
            start = date(year, int(month), 1)
        else:
            start = date(year, 1, 1)
    except ValueError:  # month 13, 31 February
        raise ValueError(f"{token}: not a valid date (YYYY-MM-DD, months 1 to 12, days as the month has)") from None
    if day is not None:
        last = start
    elif month is not None:
        last = date(year + (start.month == 12), start.month % 12 + 1, 1) - timedelta(days=1) \
            if (year, start.month) != (9999, 12) else date.max
    else:
        last = date(year, 12, 31)
    return start, (last + timedelta(days=1)) if last < date.max else None


def _folder(value: str, token: str) -> str:
    parts = [p for p in re.split(r"[/\\]+", value.strip()) if p]
    if not parts:
        raise ValueError(f"{token}: name a folder, e.g. in:Holidays/2019")
    return "/".join(" ".join(p.split()) for p in parts)


def parse_query(text: str) -> Query:
    """Parse a query (grammar: ``GRAMMAR``). ValueError names the token it cannot accept."""
    if not isinstance(text, str):
        raise ValueError(f"a query is text, not {type(text).__name__}")
    words: list[str] = []
    exclude_words: list[str] = []
    exclude_phrases: list[str] = []
    after: date | None = None
    before: date | None = None
    folders: list[str] = []
    sort: str | None = None
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        m = _TOKEN.match(text, pos)  # always matches: any non-space character starts a word
        token = m[0]
        pos = m.end()
        key = (m["key"] or "").lower()
        if key:
            value = m["quoted_value"] if m["quoted_value"] is not None else m["value"]
            if m["neg"]:
                raise ValueError(f"{token}: filters cannot be negated")
            if not value.strip():
                raise ValueError(f"{token} needs a value right after the colon, e.g. {key}:"
                                 + {"sort": "date", "in": "Holidays", "folder": "Holidays"}.get(key, "2019-06"))
            if key in DATE_KEYS:
                start, end = _period(value.strip(), token)
                if key in ("after", "date"):
                    after = start if after is None else max(after, start)
                if key in ("before", "date"):
                    bound = start if key == "before" else end
                    if bound is not None:  # (none: the period runs to the end of time)
                        before = bound if before is None else min(before, bound)
            elif key in FOLDER_KEYS:
                folder = _folder(value, token)
                if folder not in folders:
                    folders.append(folder)
            else:
                value = value.strip().lower()
                if value not in SORTS:
                    raise ValueError(f"{token}: sort by {', '.join(SORTS)}")
                if sort is not None and sort != value:
                    raise ValueError(f"{token}: the query already sorts by {sort}")
                sort = value
            continue
        phrase = m["phrase"]
        if phrase is not None:
            phrase = " ".join(phrase.split())
            if not phrase:
                continue  # empty quotes say nothing
            if m["neg"]:
                if phrase not in exclude_phrases:
                    exclude_phrases.append(phrase)
            else:
                words.append(f'"{phrase}"')
        elif m["neg"]:
            word = token[1:]
            if word not in exclude_words:
                exclude_words.append(word)
        else:
            words.append(token)
    if after is not None and before is not None and after >= before:
        raise ValueError(f"no day is both on or after {after.isoformat()} and before {before.isoformat()}: "
                         "check the after:, before: and date: values")
    return Query(" ".join(words), tuple(exclude_words), tuple(exclude_phrases), after, before, tuple(folders),
                 sort or "relevance")

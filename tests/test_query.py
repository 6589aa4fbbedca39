"""The query language (crossmodal/query.py): operators, their errors, the canonical form, and
properties over arbitrary text."""
from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmodal.query import GRAMMAR, KEYS, SORTS, Query, parse_query


def test_plain_description_is_the_text():
    q = parse_query("  a dog   running on the beach ")
    assert q == Query(text="a dog running on the beach")
    assert not q.has_filters and q.sort == "relevance"


def test_exclusions_words_and_phrases():
    q = parse_query('dog -grass on a beach -"a red car" -grass')
    assert q.text == "dog on a beach"
    assert q.exclude_words == ("grass",)  # repeated once
    assert q.exclude_phrases == ("a red car",)
    assert q.excludes == ("grass", "a red car")


def test_positive_quoted_phrase_stays_in_the_text():
    assert parse_query('a "red  car" parked').text == 'a "red car" parked'
    assert parse_query('a "red car').text == 'a "red car"'  # an unclosed quote closes at the end
    assert parse_query('dog ""').text == "dog"  # empty quotes say nothing
    assert parse_query('dog -""') == Query(text="dog")


@pytest.mark.parametrize("value, start, end", [
    ("2019", date(2019, 1, 1), date(2020, 1, 1)),
    ("2019-06", date(2019, 6, 1), date(2019, 7, 1)),
    ("2019-12", date(2019, 12, 1), date(2020, 1, 1)),
    ("2020-02-29", date(2020, 2, 29), date(2020, 3, 1)),
    ("2019-12-31", date(2019, 12, 31), date(2020, 1, 1)),
    ("2019-6-5", date(2019, 6, 5), date(2019, 6, 6)),
])
def test_date_periods(value, start, end):
    assert parse_query(f"after:{value}").after == start and parse_query(f"after:{value}").before is None
    assert parse_query(f"before:{value}").before == start and parse_query(f"before:{value}").after is None
    q = parse_query(f"date:{value}")
    assert (q.after, q.before) == (start, end)


def test_date_range_bounds_are_inclusive_then_exclusive():
    q = parse_query("after:2019-06 before:2020-01-31")
    assert q.in_date_range(date(2019, 6, 1)) and q.in_date_range(datetime(2020, 1, 30, 23, 59))
    assert not q.in_date_range(date(2019, 5, 31)) and not q.in_date_range(datetime(2020, 1, 31, 0, 0))
    assert Query().in_date_range(date(1900, 1, 1))


def test_dates_reach_years_1_to_9999():
    assert parse_query("date:9999").describe() == "after:9999-01-01"  # runs to the end of the calendar
    assert parse_query("date:9999-11").describe() == "after:9999-11-01 before:9999-12-01"
    assert parse_query("date:0001-01-01").describe() == "after:0001-01-01 before:0001-01-02"
    with pytest.raises(ValueError, match="after:10000-01: expected a date"):
        parse_query("after:10000-01")


def test_several_date_operators_narrow_the_range():
    q = parse_query("date:2019 after:2019-03 before:2019-11 after:2019-02")
    assert (q.after, q.before) == (date(2019, 3, 1), date(2019, 11, 1))


@pytest.mark.parametrize("query, token", [
    ("dog after:2019-13", "after:2019-13"),
    ("before:2019-02-30", "before:2019-02-30"),
    ("date:19", "date:19"),
    ("date:2019/06", "date:2019/06"),
    ("after:0000", "after:0000"),
    ("after:", "after:"),
    ('in:"" dog', 'in:""'),
    ("in:///", "in:///"),
    ("sort:name", "sort:name"),
    ("sort:date sort:-date", "sort:-date"),
    ("-in:Holidays", "-in:Holidays"),
    ("-after:2019", "-after:2019"),
])
def test_bad_values_name_the_token(query, token):
    with pytest.raises(ValueError) as err:
        parse_query(query)
    assert str(err.value).startswith(token)


def test_empty_date_range_is_refused():
    with pytest.raises(ValueError, match="2021-01-01.*2020-01-01"):
        parse_query("date:2021 before:2020")


def test_folders():
    q = parse_query('beach in:Holidays/2019 folder:"Summer  trip" In:\\Holidays\\2019\\')
    assert q.text == "beach"
    assert q.folders == ("Holidays/2019", "Summer trip")
    assert q.in_folders("Holidays/2019/a.jpg")
    assert q.in_folders("Photos/holidays/2019/beach/a.jpg")  # at any depth, any case
    assert q.in_folders("Summer   trip/a.jpg") and q.in_folders("x\\Summer trip\\a.jpg")
    assert not q.in_folders("Holidays/2018/2019.jpg")  # the file name is not a folder
    assert not q.in_folders("Holidays/a/2019/a.jpg")  # the names must be consecutive
    assert not q.in_folders("MyHolidays/2019/a.jpg")  # whole names, not substrings
    assert not q.in_folders("a.jpg")
    assert parse_query("in:2019").in_folders("Trips/2019/x.jpg")
    assert Query().in_folders("anything/at/all.jpg")


def test_sort_and_filters_only_query():
    q = parse_query("in:Holidays sort:date")
    assert q.text == "" and q.folders == ("Holidays",) and q.sort == "date" and q.has_filters
    assert parse_query("dog sort:-date sort:-date").sort == "-date"
    assert parse_query("SORT:Relevance AFTER:2019 dog") == Query(text="dog", after=date(2019, 1, 1))
    assert parse_query("") == Query()


def test_unknown_operators_and_lone_dashes_are_words():
    q = parse_query("http://example.com ratio:16:9 - well-known xin:Holidays")
    assert q.text == "http://example.com ratio:16:9 - well-known xin:Holidays"
    assert q == Query(text=q.text)


def test_describe_is_canonical():
    q = parse_query('-grass dog date:2021-06 -"a red car" sort:-date "on a beach" folder:"Summer trip"')
    assert q.describe() == ('dog "on a beach" -grass -"a red car" after:2021-06-01 before:2021-07-01 '
                            'in:"Summer trip" sort:-date')
    assert parse_query(q.describe()) == q


def test_grammar_documents_every_operator():
    for key in KEYS:
        assert f"{key}:" in GRAMMAR
    for sort in SORTS[1:]:
        assert f"sort:{sort}" in GRAMMAR


@settings(max_examples=400, deadline=None)
@given(st.lists(st.characters(codec="utf-8") | st.sampled_from(list(' "-:/\\0123') + [f"{k}:" for k in KEYS]),
                max_size=30).map("".join))
def test_arbitrary_text_parses_or_raises_value_error(text):
    try:
        q = parse_query(text)
    except ValueError:
        return
    assert parse_query(q.describe()) == q  # the canonical form round-trips


PLAIN = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Z", "Cc"), exclude_characters='"-:'),
                min_size=1, max_size=12).filter(lambda w: not any(c.isspace() for c in w))
OPERATOR = st.one_of(
    st.builds(lambda d: f"after:{d.isoformat()}", st.dates(date(1900, 1, 1), date(2100, 1, 1))),
    st.builds(lambda w: f"-{w}", PLAIN),
    st.builds(lambda w: f'-"{w} {w}"', PLAIN),
    st.builds(lambda w: f'in:"f{w}"', PLAIN),  # a name with more than separators
    st.sampled_from(["sort:date", "before:2200", "date:2150", "in:a/b"]),
)
SPACE = st.text(alphabet=" \t\n", min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), PLAIN, OPERATOR), max_size=8), SPACE)
def test_text_minus_operators_is_preserved(items, space):
    tokens, words = [], []
    for is_word, word, op in items:
        tokens.append(word if is_word else op)
        words += [word] if is_word else []
    q = parse_query(space.join(tokens))
    assert q.text == " ".join(words)

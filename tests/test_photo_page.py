"""The photo page's own logic (app.py), without a server: the filter controls become query
operators, paging offsets are checked, the indexing line follows the background thread."""
from __future__ import annotations

import pytest

import app
from crossmodal.query import parse_query


def test_filter_controls_become_query_operators_that_parse_back():
    query = app.compose_query(" a dog -snow ", after="2019-06", before="2020", folder=" Summer  trip/2019 ",
                              sort="Newest first")
    assert query == 'a dog -snow after:2019-06 before:2020 in:"Summer trip/2019" sort:-date'
    canonical = 'after:2019-06-01 before:2020-01-01 in:"Summer trip/2019" sort:-date'
    assert parse_query(query).describe() == f"a dog -snow {canonical}"
    assert app.compose_query("a cat", sort="Best match first") == "a cat"
    assert app.filters_of(query) == f"-snow {canonical}"  # what more like this keeps
    for bad in ({"folder": 'a"b'}, {"sort": "by size"}):
        with pytest.raises(ValueError):
            app.compose_query("a cat", **bad)


def test_offset_is_a_whole_number_from_zero():
    assert app.check_offset(20) == 20 and app.check_offset(20.0) == 20
    for bad in (-1, 2.5, "3", True, None, app.MAX_OFFSET + 1):
        with pytest.raises(ValueError, match="offset must be a whole number"):
            app.check_offset(bad)


class Indexer:
    def __init__(self, alive, done=0, total=0, error=None, report=None):
        self.alive, self.done, self.total, self.error, self.report = alive, done, total, error, report

    def is_alive(self):
        return self.alive


class Report:
    def summary(self):
        return "embedded 200 new/changed"


def test_indexing_line_follows_the_background_thread():
    engine = [0] * 120  # len(): the photos searchable so far
    assert app.indexing_line(None, engine) == ""
    assert "looking for new and changed photos" in app.indexing_line(Indexer(True), engine)
    line = app.indexing_line(Indexer(True, 150, 200), engine)
    assert line.startswith("Indexing: 150 / 200 photos (searching the 120")
    assert app.indexing_line(Indexer(False, report=Report()), engine) == \
        "Index up to date: 120 photos (embedded 200 new/changed)"
    assert app.indexing_line(Indexer(False, error=OSError("disk full")), engine) == "Indexing stopped: disk full"

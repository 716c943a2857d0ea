"""The core's stat blocks come from one table (fastproxy/stats_table.py): the index
constants, the names and the counter/gauge kind of every stat. The table refuses rows that
would drift (a name twice, a constant twice, a row that breaks the index arithmetic the core
relies on), the generated core/stats_table.pxi is what the module was built from, and a
module built from another table fails at import."""
from __future__ import annotations

import re

import pytest

from fastproxy import _core, stats_table
from fastproxy.stats_table import COUNTER, GAUGE, StatBlockDef


def _with_row(block_name, at, row):
    """BLOCKS with `row` inserted at index `at` of one block."""
    out = []
    for b in stats_table.BLOCKS:
        if b.name == block_name:
            rows = list(b.stats)
            rows.insert(at, row)
            b = b._replace(stats=tuple(rows))
        out.append(b)
    return tuple(out)


def test_the_built_core_has_the_tables_blocks():
    index = stats_table.check()
    for b in stats_table.BLOCKS:
        names, gauges, n = _core.STAT_BLOCKS[b.name]
        assert names == stats_table.names(b) == getattr(_core, f"{b.name}_STATS")
        assert gauges == stats_table.gauges(b) == getattr(_core, f"{b.name}_GAUGES")
        assert n == len(names) == len(b.stats)
        assert len(set(names)) == len(names)
    assert _core.STAT_INDEX == index
    # every index of every block has a name, and every constant a row of its own
    for b in stats_table.BLOCKS:
        consts = [c for c, _, _ in b.stats if c is not None]
        assert sorted(index[c] for c in consts) == sorted(set(index[c] for c in consts))
        assert all(0 <= index[c] < len(b.stats) for c in consts)


def test_the_engines_blocks_read_the_tables_names_and_kinds():
    engine = _core.Engine(1)            # not started: no worker threads
    for kind, name in (("listener", "LISTENER"), ("tcp", "TCP"), ("cluster", "CLUSTER"),
                       ("listener_http", "LISTENER_HTTP"), ("http1", "HTTP1"), ("http", "HTTP")):
        block = engine.new_stats(kind)
        b = stats_table.block(name)
        assert block.names == stats_table.names(b)
        assert block.gauges == stats_table.gauges(b)
        assert set(block.read()) == set(stats_table.names(b))


def test_a_name_twice_in_a_block_is_refused():
    bad = _with_row("TCP", 3, ("T_AGAIN", "downstream_cx_total", COUNTER))
    with pytest.raises(ValueError, match=r"TCP\[3\].*'downstream_cx_total' is in block TCP twice"):
        stats_table.check(bad)


def test_a_constant_twice_is_refused():
    bad = _with_row("HTTP1", 0, ("H_CX_TOTAL", "something_new", COUNTER))
    with pytest.raises(ValueError, match="H_CX_TOTAL is defined twice"):
        stats_table.check(bad)


def test_an_unknown_kind_is_refused():
    bad = _with_row("HOST", 0, ("HS_NEW", "new", "histogram"))
    with pytest.raises(ValueError, match="kind must be COUNTER or GAUGE"):
        stats_table.check(bad)


def test_a_row_that_breaks_the_index_arithmetic_is_refused():
    # upstream_rq_<class>xx are addressed as C_RQ_1XX + class: a row inside that run moves
    # the 2xx..5xx counters under other names, which the table catches
    at = [c for c, _, _ in stats_table.block("CLUSTER").stats].index("C_RQ_1XX") + 2
    bad = _with_row("CLUSTER", at, ("C_NEW", "upstream_rq_new", COUNTER))
    with pytest.raises(ValueError, match=r"C_RQ_1XX \+ 2 must be 'upstream_rq_3xx'"):
        stats_table.check(bad)
    # the same row at the end of the block is fine: that is how a stat is added
    good = _with_row("CLUSTER", len(stats_table.block("CLUSTER").stats), ("C_NEW", "upstream_rq_new", GAUGE))
    assert stats_table.check(good)["C_NEW"] == len(stats_table.block("CLUSTER").stats)


def test_the_generated_pxi_declares_each_row_once():
    text = stats_table.render_pxi()
    for b in stats_table.BLOCKS:
        for const, _, _ in b.stats:
            if const is not None:
                assert len(re.findall(rf"^    {const} = \d+$", text, re.M)) == 1, const
        assert re.search(rf"^    {b.nstats} = {len(b.stats)}$", text, re.M)
    bad = (StatBlockDef("X", "X_NSTATS", "x", (("X_A", "a", COUNTER), ("X_B", "a", GAUGE))),)
    with pytest.raises(ValueError):
        stats_table.render_pxi(bad, ())


def test_a_core_built_from_another_table_fails_at_import(monkeypatch):
    _core._check_stats_table()          # this build: the same table
    added = _with_row("HTTP", len(stats_table.block("HTTP").stats), ("H_NEW", "downstream_new", COUNTER))
    monkeypatch.setattr(stats_table, "BLOCKS", added)
    monkeypatch.setattr(stats_table.check, "__defaults__", (added, stats_table.ARITHMETIC))
    with pytest.raises(ImportError, match="built from another stats table.*HTTP.*make core"):
        _core._check_stats_table()

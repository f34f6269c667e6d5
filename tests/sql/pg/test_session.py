"""Session rules without I/O: settings (SET, RESET, SHOW, ParameterStatus) and the failed transaction state."""

from __future__ import annotations

import pytest

from trionet.sql.pg import messages as m
from trionet.sql.pg.session import PgError, Settings, TransactionRule
from trionet.sql.pg.statements import classify, split


def test_startup_parameters_are_applied_and_reported():
    settings = Settings({"user": "ann", "database": "quakes", "application_name": "psql", "DateStyle": "ISO, DMY"}, read_only=True)
    reported = {s.name: s.value for s in settings.status_messages()}
    assert reported["application_name"] == "psql"
    assert reported["DateStyle"] == "ISO, DMY"
    assert reported["default_transaction_read_only"] == "on"
    assert reported["session_authorization"] == "ann"
    assert settings.database == "quakes"


def test_database_defaults_to_user():
    assert Settings({"user": "ann"}, read_only=False).database == "ann"


def test_set_reports_only_what_postgresql_reports():
    settings = Settings({}, read_only=False)
    assert settings.set("application_name", "x") == [m.ParameterStatus("application_name", "x")]
    assert settings.set("TimeZone", "Europe/Paris") == [m.ParameterStatus("TimeZone", "Europe/Paris")]
    assert settings.set("search_path", "a, b") == []
    assert settings.show("search_path") == ("search_path", [("a, b",)])
    assert settings.set("myapp.flag", "1") == []
    assert settings.reset("all") == [m.ParameterStatus("application_name", ""), m.ParameterStatus("TimeZone", "UTC")]
    assert settings.show("timezone") == ("timezone", [("UTC",)])


@pytest.mark.parametrize(
    "name, value, code",
    [
        ("client_encoding", "LATIN1", "22023"),
        ("standard_conforming_strings", "off", "22023"),
        ("bytea_output", "escape", "22023"),
        ("server_version", "16", "55P02"),
        ("no_such_thing", "1", "42704"),
    ],
)
def test_set_refuses_what_cannot_be_honoured(name, value, code):
    with pytest.raises(PgError) as info:
        Settings({}, read_only=False).set(name, value)
    assert info.value.code == code


def test_set_client_encoding_utf8_spellings():
    settings = Settings({}, read_only=False)
    assert settings.set("client_encoding", "unicode") == [m.ParameterStatus("client_encoding", "UTF8")]


def test_show_unknown_is_42704():
    with pytest.raises(PgError) as info:
        Settings({}, read_only=False).show("nope")
    assert info.value.code == "42704"


def _check(rule: TransactionRule, sql: str) -> None:
    statement = split(sql)[0]
    rule.check(classify(statement), statement.words)


def test_failed_block_refuses_all_but_its_end():
    rule = TransactionRule()
    assert rule.status(False) == "I" and rule.status(True) == "T"
    rule.on_error(False, False)
    assert not rule.failed  # outside a block an error leaves nothing behind
    rule.on_error(True, True)
    assert rule.status(True) == "E" and rule.status(False) == "E"
    with pytest.raises(PgError) as info:
        _check(rule, "select 1")
    assert info.value.code == "25P02"
    for sql in ("rollback", "commit", "rollback to savepoint a", "ABORT", "END"):
        _check(rule, sql)
    rule.on_end()
    assert rule.status(False) == "I"
    _check(rule, "select 1")


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("SELECT abalance FROM t WHERE aid = 1", "SELECT abalance FROM t WHERE aid = 99999", True),
        ("SELECT x FROM t WHERE s = 'a'", "SELECT x FROM t WHERE s = 'it''s'", True),
        ("SELECT 1.5e3, x FROM t1", "SELECT 2, x FROM t1", True),
        ("SELECT x FROM t1", "SELECT x FROM t2", False),  # a digit in a name is not a literal
        ('SELECT "a 1" FROM t', 'SELECT "a 2" FROM t', False),  # nor in a quoted name
        ("SELECT a -- '\n, b FROM t -- '", "SELECT a -- '\n, c FROM t -- '", False),  # a quote in a comment
    ],
)
def test_statement_shapes_differ_only_in_literals(a, b, same):
    from trionet.sql.pg.executor import _shape

    assert (_shape(a) == _shape(b)) is same

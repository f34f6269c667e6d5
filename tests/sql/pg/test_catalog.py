"""The emulated pg_catalog: rewriting psql's SQL, and its own sandbox."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet.sql.engine import Database, SqlError
from trionet.sql.pg import catalog

from .conftest import make_db


def run(quake_db, sql: str, params=()):
    session = Database(quake_db).open_session()
    try:
        return catalog.run(session, sql, params, user="u", database="quakes", version="v", max_rows=1000)
    finally:
        session.close()


def test_rewrite_psql_isms():
    sql = (
        "SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) "
        "'^(quakes)$' COLLATE pg_catalog.default AND n.nspname !~ '^pg_toast' AND x = any (y)"
    )
    assert catalog.rewrite(sql) == (
        "SELECT pg_regclass(c.oid) FROM pg_class c WHERE c.relname  REGEXP  '^(quakes)$'  AND n.nspname  NOT REGEXP  "
        "'^pg_toast' AND x  IN (y)"
    )


def test_tables_columns_and_types(quake_db):
    names, decls, rows = run(
        quake_db,
        "SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relname = $1 ORDER BY a.attnum",
        ("kinds",),
    )
    assert names == ["relname", "attname", "format_type(a.atttypid, a.atttypmod)", "attnotnull"]
    assert decls[3] == "BOOLEAN"  # psql reads booleans as 't'/'f'
    assert [r[1:3] for r in rows] == [
        ("i", "bigint"), ("r", "double precision"), ("t", "text"), ("b", "bytea"), ("n", "text")
    ]


def test_catalog_holds_names_not_data(quake_db):
    with pytest.raises(SqlError) as info:
        run(quake_db, "SELECT * FROM pg_catalog.pg_class, quakes")
    assert info.value.code == "sql_error" and "no such table: quakes" in info.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT load_extension('x') FROM pg_catalog.pg_class",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT * FROM c, pg_catalog.pg_class",
        "DELETE FROM pg_catalog.pg_class",
        "PRAGMA pg_catalog.table_info(pg_class)",
    ],
)
def test_only_reading_is_allowed(quake_db, sql):
    with pytest.raises(SqlError) as info:
        run(quake_db, sql)
    assert info.value.code == "denied"


def test_work_is_bounded(quake_db):
    with pytest.raises(SqlError) as info:
        run(
            quake_db,
            "SELECT count(*) FROM pg_catalog.pg_attribute a, pg_catalog.pg_attribute b, pg_catalog.pg_attribute c, "
            "pg_catalog.pg_attribute d, pg_catalog.pg_attribute e, pg_catalog.pg_attribute f",
        )
    assert info.value.code == "too_big"


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|aa)*$", "a*a*a*a*b", "x{1,9}{1,9}"])
def test_regular_expressions_that_could_run_for_ever_are_refused(quake_db, pattern):
    with pytest.raises(SqlError):
        run(quake_db, "SELECT relname FROM pg_catalog.pg_class WHERE relname ~ $1", (pattern,))


def test_psql_patterns_match(quake_db):
    _, _, rows = run(quake_db, "SELECT relname FROM pg_catalog.pg_class WHERE relname ~ $1 ORDER BY 1", ("^(qu.*)$",))
    assert rows == [("quakes",), ("quakes_mag",), ("quakes_pkey",), ("quakes_time",)]


def test_rewrite_sqlalchemy_and_jdbc_isms():
    assert catalog.rewrite("x = ANY (ARRAY[$1::VARCHAR, $2::VARCHAR]) AND y != ALL (ARRAY['a'])") == (
        "x  IN ($1, $2) AND y  NOT IN ('a')"
    )
    # An ordered aggregate: the key becomes array_agg's second argument (SQLite 3.40 has no ORDER BY in calls).
    assert catalog.rewrite("select array_agg(CAST(a AS TEXT) ORDER BY t.ord) AS c, array_agg(b)") == (
        "select array_agg(CAST(a AS TEXT), t.ord) AS c, array_agg(b)"
    )
    assert catalog.rewrite("select array_agg(a ORDER BY o DESC), array_agg(b ORDER BY x, y)") == (
        "select array_agg(a, o, 1), array_agg(b)"
    )
    assert catalog.rewrite("nspname = (pg_catalog.current_schemas(true))[1]") == "nspname = current_schema()"


def test_array_agg_is_announced_as_an_array(quake_db):
    names, decls, rows = run(
        quake_db,
        "SELECT array_agg(a.attname) AS names, array_agg(a.attnum) AS nums FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE c.relname = $1",
        ("kinds",),
    )
    assert decls == ["_TEXT", "_INT8"]
    assert rows == [('{"i","r","t","b","n"}', "{1,2,3,4,5}")]


def test_primary_keys_are_constraints_and_pg_type_is_complete(quake_db):
    _, _, rows = run(
        quake_db,
        "SELECT con.conname, con.contype, c.relname FROM pg_catalog.pg_constraint con "
        "JOIN pg_catalog.pg_class c ON c.oid = con.conindid",
    )
    assert rows == [("quakes_pkey", "p", "quakes_pkey")]
    _, _, rows = run(quake_db, "SELECT typname, typarray, typlen FROM pg_type WHERE oid = to_regtype($1)", ("bigint",))
    assert rows == [("int8", 1016, 8)]


def test_bare_catalog_names_are_routed_to_the_catalog():
    from trionet.sql.pg.statements import classify, split

    assert classify(split("SELECT typname FROM pg_type t WHERE t.oid = $1")[0]).kind == "catalog"
    assert classify(split("SELECT * FROM quakes JOIN pg_namespace n ON 1")[0]).kind == "catalog"
    assert classify(split("SELECT * FROM pg_my_own_table")[0]).kind == "sql"


def test_information_schema_tables_and_columns(quake_db):
    _, _, rows = run(
        quake_db,
        "SELECT table_schema, table_name, table_type FROM information_schema.tables ORDER BY table_name",
    )
    assert rows == [("main", "kinds", "BASE TABLE"), ("main", "quakes", "BASE TABLE")]
    _, _, rows = run(
        quake_db,
        "SELECT column_name, data_type, is_nullable, udt_name FROM information_schema.columns "
        "WHERE table_name = $1 ORDER BY ordinal_position",
        ("quakes",),
    )
    # SQLite lets a TEXT PRIMARY KEY hold NULL unless it is declared NOT NULL.
    assert rows[:3] == [("id", "text", "YES", "text"), ("time", "text", "YES", "text"), ("mag", "double precision", "YES", "float8")]


def test_unnest_in_a_select_list_becomes_a_join_with_json_each():
    rewritten = catalog.rewrite(
        "SELECT c.conname, unnest(i.indkey) AS attnum, generate_subscripts(i.indkey, $1::INTEGER) AS ord "
        "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_index i ON c.conindid = i.indexrelid WHERE c.contype = 'p'"
    )
    assert rewritten == (
        "SELECT c.conname, _unnest0.value AS attnum, (_unnest0.key + 1) AS ord "
        "FROM pg_constraint c JOIN pg_index i ON c.conindid = i.indexrelid "
        "JOIN json_each(pg_array_json(i.indkey)) AS _unnest0 WHERE c.contype = 'p'"
    )
    # Two in one select list run side by side, as PostgreSQL zips them.
    assert catalog.rewrite("SELECT unnest(i.indkey) AS k, unnest(i.indclass) AS c FROM pg_index i") == (
        "SELECT _unnest0.value AS k, pg_array_item(i.indclass, _unnest0.key) AS c FROM pg_index i "
        "JOIN json_each(pg_array_json(i.indkey)) AS _unnest0 "
    )
    # Not in a select list with a FROM: left to the older rewrite (no rows).
    assert catalog.rewrite("select x from (select 1) where 1 = any(select unnest(y))") == (
        "select x from (select 1) where 1  IN (select (y))"
    )


def test_multi_column_primary_keys_and_their_names(tmp_path):
    db = tmp_path / "keys.sqlite"
    make_db(
        db,
        "create table pair (a text, b integer, c real, constraint pair_key primary key (b, a));"
        "create table rowid_key (id integer primary key, v text);"
        "create table bare (k text, j integer, primary key (k, j)) without rowid;"
    )
    _, _, rows = run(
        db,
        "SELECT t.relname, con.conname, array_agg(a.attname ORDER BY k.ord) FROM pg_catalog.pg_constraint con "
        "JOIN pg_catalog.pg_class t ON t.oid = con.conrelid "
        "JOIN (SELECT conindid, unnest(conkey) AS attnum, generate_subscripts(conkey, 1) AS ord, conrelid "
        "      FROM pg_catalog.pg_constraint WHERE contype = 'p') k ON k.conindid = con.conindid "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum "
        "WHERE con.contype = 'p' GROUP BY t.relname, con.conname ORDER BY 1",
    )
    assert rows == [
        ("bare", "bare_pkey", '{"k","j"}'),  # WITHOUT ROWID: no index of SQLite's, one made up
        ("pair", "pair_key", '{"b","a"}'),  # the key's order, not the table's; its CONSTRAINT name
        ("rowid_key", "rowid_key_pkey", '{"id"}'),  # INTEGER PRIMARY KEY: the rowid, no index either
    ]


def test_constraints_of_create_table_text():
    from trionet.sql.pg.ddl import TableConstraint, table_constraints

    sql = (
        'CREATE TABLE "t 3" ([a b] text constraint uq unique constraint "c,1" check (length([a b]) < 5 /* ) */),'
        " b int not null default (1 + 2) references p deferrable initially deferred,"
        " unique (b, \"a b\" collate nocase desc) on conflict fail, check (b <> ')'),"
        " constraint k foreign key (b) references \"P\" (x) on delete cascade not deferrable)"
    )
    assert table_constraints(sql) == (
        TableConstraint("u", "uq", ("a b",)),
        TableConstraint("c", "c,1", ("a b",), "length([a b]) < 5"),
        TableConstraint("f", None, ("b",), None, "p", True, True),
        TableConstraint("u", None, ("b", "a b")),
        TableConstraint("c", None, (), "b <> ')'"),
        TableConstraint("f", "k", ("b",), None, "P", False, False),
    )
    assert table_constraints("create table x as select 1") == ()
    assert table_constraints("create table y (a check (") == (TableConstraint("c", None, ("a",), ""),)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_reading_create_table_never_fails(text):
    from trionet.sql.pg.ddl import table_constraints

    for sql in (text, "create table t (" + text, "create table t (a int " + text + ")"):
        for constraint in table_constraints(sql):
            assert constraint.kind in "pucf"


def test_foreign_keys_uniques_and_checks_in_pg_constraint(tmp_path):
    db = tmp_path / "fk.sqlite"
    make_db(
        db,
        "create table parent (id integer primary key, code text unique, \"Odd\" int, \"select\" int, unique (\"Odd\", \"select\"));"
        "create table child (id integer primary key, p integer references parent on update set null,"
        " q integer references nowhere (x), r integer references parent (code) match full, check (p > q), check (r <> 0),"
        " foreign key (q) references parent (id) deferrable initially deferred, check (q > 0), check (r > p));"
        "create table child_r_check (x);"  # a relation: no conflict with a CHECK's name, as in PostgreSQL
    )
    _, _, rows = run(
        db,
        "SELECT conname, contype, pg_get_constraintdef(oid, true), pg_get_constraintdef(oid), conkey, confkey,"
        " conrelid::regclass, confrelid, confupdtype, confdeltype, confmatchtype, condeferrable, condeferred"
        " FROM pg_catalog.pg_constraint ORDER BY conrelid, contype, conname",
    )
    parent = 16384
    assert rows == [
        ("parent_pkey", "p", "PRIMARY KEY (id)", "PRIMARY KEY (id)", "{1}", None, "parent", 0, "a", "a", "s", 0, 0),
        ("parent_Odd_select_key", "u", 'UNIQUE ("Odd", "select")', 'UNIQUE ("Odd", "select")', "{3,4}", None, "parent", 0, "a", "a", "s", 0, 0),
        ("parent_code_key", "u", "UNIQUE (code)", "UNIQUE (code)", "{2}", None, "parent", 0, "a", "a", "s", 0, 0),
        ("child_check", "c", "CHECK (p > q)", "CHECK ((p > q))", "{2,3}", None, "child", 0, "a", "a", "s", 0, 0),
        ("child_check1", "c", "CHECK (r > p)", "CHECK ((r > p))", "{2,4}", None, "child", 0, "a", "a", "s", 0, 0),
        ("child_q_check", "c", "CHECK (q > 0)", "CHECK ((q > 0))", "{3}", None, "child", 0, "a", "a", "s", 0, 0),
        ("child_r_check", "c", "CHECK (r <> 0)", "CHECK ((r <> 0))", "{4}", None, "child", 0, "a", "a", "s", 0, 0),
        ("child_p_fkey", "f", "FOREIGN KEY (p) REFERENCES parent(id) ON UPDATE SET NULL", "FOREIGN KEY (p) REFERENCES parent(id) ON UPDATE SET NULL",
         "{2}", "{1}", "child", parent, "n", "a", "s", 0, 0),
        ("child_q_fkey", "f", "FOREIGN KEY (q) REFERENCES nowhere(x)", "FOREIGN KEY (q) REFERENCES nowhere(x)",
         "{3}", "{0}", "child", 0, "a", "a", "s", 0, 0),  # its parent is not there: SQLite allows that
        ("child_q_fkey1", "f", "FOREIGN KEY (q) REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED",
         "FOREIGN KEY (q) REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED", "{3}", "{1}", "child", parent, "a", "a", "s", 1, 1),
        # SQLite reads MATCH and ignores it (PRAGMA foreign_key_list says NONE): PostgreSQL's default shown.
        ("child_r_fkey", "f", "FOREIGN KEY (r) REFERENCES parent(code)", "FOREIGN KEY (r) REFERENCES parent(code)",
         "{4}", "{2}", "child", parent, "a", "a", "s", 0, 0),
        ("child_pkey", "p", "PRIMARY KEY (id)", "PRIMARY KEY (id)", "{1}", None, "child", 0, "a", "a", "s", 0, 0),
    ]
    _, _, rows = run(db, "SELECT relname, relchecks, relhastriggers FROM pg_catalog.pg_class WHERE relkind = 'r' ORDER BY oid")
    assert rows == [("parent", 0, 1), ("child", 4, 1), ("child_r_check", 0, 0)]


_NAMES = st.sampled_from(["a", "b", "c", "Odd Name", "select", "x1"])


@st.composite
def _tables(draw):
    """A child table's CREATE TABLE with random UNIQUE, CHECK and FOREIGN KEY constraints, some named, and what it holds."""
    columns = draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    quoted = {c: '"' + c + '"' for c in columns}
    parts, expected, names = [], {"u": 0, "c": 0, "f": 0}, []
    for column in columns:
        text = f"{quoted[column]} INTEGER"
        for kind in draw(st.lists(st.sampled_from(["unique", "check", "references"]), max_size=2, unique=True)):
            name = draw(st.none() | st.sampled_from(["k1", "k2", "k 3"]).filter(lambda n: n not in [m for m, _ in names]))
            if name:
                names.append((name, kind))
                text += f' CONSTRAINT "{name}"'
            text += {"unique": " UNIQUE", "check": f" CHECK ({quoted[column]} > 0)", "references": " REFERENCES parent (id)"}[kind]
            expected[kind[0].replace("r", "f")] += 1
        parts.append(text)
    for kind in draw(st.lists(st.sampled_from(["unique", "check", "foreign"]), max_size=3)):
        keys = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=2, unique=True))
        listed = ", ".join(quoted[k] for k in keys)
        parts.append({
            "unique": f"UNIQUE ({listed})", "check": f"CHECK ({' + '.join(quoted[k] for k in keys)} <> 7)",
            "foreign": f"FOREIGN KEY ({listed}) REFERENCES parent ({', '.join(['id', 'v'][: len(keys)])})",
        }[kind])  # fmt: skip
        expected[kind[0]] += 1
    return "CREATE TABLE child (" + ", ".join(parts) + ")", expected, names


@given(_tables())
@settings(max_examples=40, deadline=None)
def test_every_constraint_sqlite_keeps_is_listed_once(table):
    import tempfile

    sql, expected, names = table
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/t.sqlite"
        setup = sqlite3.connect(db)
        setup.executescript(f"create table parent (id integer primary key, v integer, unique (id, v)); {sql};")
        autoindexes = setup.execute("select count(*) from pragma_index_list('child') where origin = 'u'").fetchone()[0]
        setup.close()
        _, _, rows = run(
            db,
            "SELECT con.contype, con.conname FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid"
            " WHERE c.relname = 'child'",
        )
    kinds = [kind for kind, _ in rows]
    # SQLite merges UNIQUE constraints on the same columns into one index: PostgreSQL would list each.
    assert kinds.count("u") == autoindexes <= expected["u"]
    assert (kinds.count("c"), kinds.count("f")) == (expected["c"], expected["f"])
    conames = [name for _, name in rows]
    assert len(set(conames)) == len(conames)  # unique names, as PostgreSQL's
    for name, kind in names:  # a written name is kept (a UNIQUE's may be merged away with its twin)
        assert conames.count(name) == 1 or (kind == "unique" and conames.count(name) == 0)


def test_long_default_names_are_cut_to_63_bytes_as_postgresql_cuts_them(tmp_path):
    table, column = "parent_" + "x" * 56, "é" + "y" * 40
    db = tmp_path / "long.sqlite"
    setup = sqlite3.connect(db)
    setup.execute(
        f'create table {table} (id int primary key, "{column}" int unique, z int,'
        f' check (z > "{column}"), check (z > 0), check (z > 1))'
    )
    setup.close()
    _, _, rows = run(db, "SELECT conname FROM pg_catalog.pg_constraint ORDER BY 1")
    # What PostgreSQL 15 names the same constraints (the longer part shortened first, never inside a character).
    assert [r[0] for r in rows] == [
        "parent_xxxxxxxxxxxxxxxxxxxxxx_éyyyyyyyyyyyyyyyyyyyyyyyyyyy_key",
        "parent_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_z_check1",
        "parent_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_z_check",
        "parent_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_check",
        "parent_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_pkey",
    ]

"""psql, the PostgreSQL client, against a real server in-process (Debian package postgresql-client)."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest
import trio

from .conftest import make_db

pytestmark = pytest.mark.requires_tool("psql", "postgresql-client")


async def psql(address, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    host, port = address
    env = {
        **os.environ,
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": "analyst",
        "PGDATABASE": "quakes",
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "prefer",  # psql's default: asks for TLS first, must go on after 'N'
        "PSQLRC": os.devnull,
    }
    result = await trio.run_process(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", *args], capture_stdout=True, capture_stderr=True, env=env, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


async def test_unaligned_tuples_only_with_null_and_values(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-A", "-t", "-c", "select id, mag, nst, place from quakes order by id limit 2")
    assert result.stdout.decode().splitlines() == [
        "q00000|3.0||0km N of Town, Oklahoma",
        "q00001|3.1|1|1km N of Town, California",
    ]


async def test_table_output_and_every_storage_class(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-A", "-t", "-c", "select i, r, t, b, n from kinds order by rowid")
    assert result.stdout.decode().splitlines() == ["42|2.5|text|\\x00ff626c6f62|", "-9223372036854775808|Infinity||\\x|1.0"]  # an empty bytea is \\x, as in PostgreSQL
    result = await psql(address, "-c", "select count(*) as n from quakes")
    assert "2000" in result.stdout.decode() and "(1 row)" in result.stdout.decode()


async def test_several_statements_and_builtins(start_pg):
    _, address = await start_pg()
    result = await psql(
        address, "-A", "-t", "-c", "select 1; select current_database(); show server_version; select version()"
    )
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["1", "quakes", "15.0 (trionet)"]
    assert "trionet" in lines[3]


async def test_errors_are_reported_with_sqlstate(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-v", "VERBOSITY=verbose", "-c", "select * from nope", check=False)
    assert result.returncode != 0
    assert "42P01" in result.stderr.decode() and "no such table: nope" in result.stderr.decode()


async def test_read_only_server_refuses_writes(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-v", "VERBOSITY=verbose", "-c", "delete from quakes", check=False)
    assert "25006" in result.stderr.decode()


async def test_script_with_transaction_on_a_read_write_server(start_pg, tmp_path):
    db = tmp_path / "rw.sqlite"
    sqlite3.connect(db).close()
    _, address = await start_pg(db=db, read_write=True)
    script = tmp_path / "script.sql"
    script.write_text(
        "create table t (a integer, b text);\n"
        "begin;\ninsert into t values (1, 'x'), (2, NULL);\ncommit;\n"
        "begin immediate;\ninsert into t values (3, 'rolled back');\nrollback;\n"
        "select a, b from t order by a;\n"
    )
    result = await psql(address, "-A", "-t", "-f", str(script))
    assert result.stdout.decode().splitlines() == [
        "CREATE TABLE", "BEGIN", "INSERT 0 2", "COMMIT", "BEGIN", "INSERT 0 1", "ROLLBACK", "1|x", "2|"
    ]
    result = await psql(address, "-c", "insert into t values (9, 'z')")
    assert result.stdout.decode().strip() == "INSERT 0 1"


async def test_backslash_dt_lists_tables(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-A", "-t", "-c", "\\dt")
    assert result.stdout.decode().splitlines() == ["main|kinds|table|analyst", "main|quakes|table|analyst"]


async def test_backslash_d_describes_a_table(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-c", "\\d quakes")
    lines = [line.rstrip() for line in result.stdout.decode().strip().splitlines()]
    assert 'Table "main.quakes"' in lines[0]
    assert [line.split("|")[:2] for line in lines[3:8]] == [
        [" id     ", " text             "],
        [" time   ", " text             "],
        [" mag    ", " double precision "],
        [" place  ", " text             "],
        [" nst    ", " bigint           "],
    ]
    assert lines[8:] == [
        "Indexes:",
        '    "quakes_pkey" PRIMARY KEY, btree (id)',
        '    "quakes_mag" btree (mag)',
        '    "quakes_time" btree ("time")',  # quoted, as PostgreSQL quotes a keyword
    ]


async def test_backslash_d_of_a_missing_table(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-c", "\\d nope", check=False)
    assert "Did not find any relation named" in result.stderr.decode()


async def test_backslash_d_of_a_view(start_pg, tmp_path):
    db = tmp_path / "views.sqlite"
    make_db(db, "create table t (a integer not null, b text default 'x'); create view big as select a from t where a > 1;")
    _, address = await start_pg(db=db)
    result = await psql(address, "-c", "\\d big", "-c", "\\d t")
    out = result.stdout.decode()
    assert 'View "main.big"' in out
    assert 'Table "main.t"' in out and "not null" in out and "'x'" in out
    result = await psql(address, "-A", "-c", "\\d+ big")
    lines = result.stdout.decode().splitlines()
    assert lines[1:3] == ["Column|Type|Collation|Nullable|Default|Storage|Description", "a|bigint||||plain|"]
    assert lines[-2:] == ["View definition:", "select a from t where a > 1"]  # pg_get_viewdef: the query only


async def test_backslash_d_plus_describes_storage_keys_and_access_method(start_pg, tmp_path):
    db = tmp_path / "keys.sqlite"
    make_db(
        db,
        "create table pair (a text not null, b integer, note text default 'x', constraint pair_key primary key (b, a));"
        "create table n (id integer primary key, v blob unique);"
    )
    _, address = await start_pg(db=db)
    result = await psql(address, "-A", "-c", "\\d+ pair", "-c", "\\d+ n")
    assert result.stdout.decode().splitlines() == [
        'Table "main.pair"',
        "Column|Type|Collation|Nullable|Default|Storage|Compression|Stats target|Description",
        "a|text||not null||extended|||",
        "b|bigint||||plain|||",
        "note|text|||'x'|extended|||",
        "Indexes:",
        '    "pair_key" PRIMARY KEY, btree (b, a)',
        "Access method: heap",
        'Table "main.n"',
        "Column|Type|Collation|Nullable|Default|Storage|Compression|Stats target|Description",
        "id|bigint||||plain|||",
        "v|bytea||||extended|||",
        "Indexes:",
        '    "n_pkey" PRIMARY KEY, btree (id)',  # the rowid: SQLite keeps no index, PostgreSQL would show one
        '    "n_v_key" UNIQUE CONSTRAINT, btree (v)',  # PostgreSQL's name, not sqlite_autoindex_n_1
        "Access method: heap",
    ]


KEYS_SCHEMA = (
    "create table parent (id integer primary key, code text unique, a integer, b integer, constraint parent_ab unique (a, b));"
    "create table child (id integer primary key, parent_id integer references parent(id) on delete cascade,"
    " a integer, b integer, qty integer check (qty > 0),"
    " constraint child_ab_fkey foreign key (a, b) references parent (a, b), constraint positive check (a >= 0 and b >= 0));"
)


async def test_backslash_d_shows_checks_foreign_keys_and_referenced_by(start_pg, tmp_path):
    db = tmp_path / "fk.sqlite"
    make_db(db, KEYS_SCHEMA)
    _, address = await start_pg(db=db)
    result = await psql(address, "-A", "-c", "\\d child", "-c", "\\d parent")
    lines = result.stdout.decode().splitlines()
    # What PostgreSQL 15 prints for the same schema, but for SQLite's types and its CHECK text as written.
    assert lines[lines.index("Indexes:") :] == [
        "Indexes:",
        '    "child_pkey" PRIMARY KEY, btree (id)',
        "Check constraints:",
        '    "child_qty_check" CHECK (qty > 0)',
        '    "positive" CHECK (a >= 0 and b >= 0)',
        "Foreign-key constraints:",
        '    "child_ab_fkey" FOREIGN KEY (a, b) REFERENCES parent(a, b)',
        '    "child_parent_id_fkey" FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE',
        'Table "main.parent"',
        "Column|Type|Collation|Nullable|Default",
        "id|bigint|||",
        "code|text|||",
        "a|bigint|||",
        "b|bigint|||",
        "Indexes:",
        '    "parent_pkey" PRIMARY KEY, btree (id)',
        '    "parent_ab" UNIQUE CONSTRAINT, btree (a, b)',
        '    "parent_code_key" UNIQUE CONSTRAINT, btree (code)',
        "Referenced by:",
        '    TABLE "child" CONSTRAINT "child_ab_fkey" FOREIGN KEY (a, b) REFERENCES parent(a, b)',
        '    TABLE "child" CONSTRAINT "child_parent_id_fkey" FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE',
    ]


async def test_backslash_l_lists_the_one_database_and_df_no_functions(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-A", "-c", "\\l", "-c", "\\df")
    assert result.stdout.decode().splitlines() == [
        "List of databases",
        "Name|Owner|Encoding|Collate|Ctype|ICU Locale|Locale Provider|Access privileges",
        "quakes|analyst|UTF8|C|C||libc|",
        "(1 row)",
        "List of functions",
        "Schema|Name|Result data type|Argument data types|Type",
        "(0 rows)",
    ]


async def test_backslash_du_lists_the_startup_user_and_df_plus_no_functions(start_pg):
    _, address = await start_pg()
    result = await psql(address, "-A", "-c", "\\du", "-c", "\\df+", "-c", "\\du nobody")
    assert result.stdout.decode().splitlines() == [
        "List of roles",
        "Role name|Attributes|Member of",
        "analyst||{}",  # the server trusts its clients: the one role is whoever connected
        "List of functions",
        "Schema|Name|Result data type|Argument data types|Type|Volatility|Parallel|Owner|Security|Access privileges"
        "|Language|Source code|Description",
        "(0 rows)",
        "List of roles",
        "Role name|Attributes|Member of",
    ]

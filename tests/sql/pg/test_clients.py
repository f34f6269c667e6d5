"""asyncpg, pg8000 and SQLAlchemy 2 (psycopg driver) against a real server in-process, unchanged."""

from __future__ import annotations

import asyncio
import decimal
import math
import sqlite3

import pytest
import trio

from .conftest import make_db

try:
    import asyncpg
    import pg8000.native
    import sqlalchemy as sa
except ImportError:  # the test extra installs them; a developer without them skips, CI fails
    asyncpg = None


pytestmark = pytest.mark.requires_module("asyncpg", "pg8000", "sqlalchemy")


@pytest.fixture
def typed_db(tmp_path):
    """A table with a column of every type the server announces, plus a row of NULLs."""
    path = tmp_path / "typed.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n NUMERIC(10, 2), f BOOLEAN)"
    )
    conn.execute("INSERT INTO typed VALUES (1, ?, ?, ?, ?, ?, ?)", (-(2**63), -2.5, "café", b"\x00\xff", "12.25", 1))
    conn.execute("INSERT INTO typed VALUES (2, ?, ?, ?, ?, ?, ?)", (2**40, math.inf, "", b"", 7, 0))
    conn.execute("INSERT INTO typed (id) VALUES (3)")
    conn.commit()
    conn.close()
    return path


async def in_asyncio(fn, *args):
    """asyncpg runs on asyncio: give it a loop of its own in a thread while trio serves."""
    return await trio.to_thread.run_sync(lambda: asyncio.run(fn(*args)))


async def asyncpg_connect(address):
    host, port = address
    return await asyncpg.connect(host=host, port=port, user="analyst", database="quakes", timeout=10)


# --- asyncpg: binary results, prepared statements, parameters typed by the server -----------------


async def test_asyncpg_reads_every_announced_type_in_binary(start_pg, typed_db):
    _, address = await start_pg(db=typed_db)

    async def go():
        conn = await asyncpg_connect(address)
        try:
            rows = await conn.fetch("SELECT i, r, t, b, n, f FROM typed ORDER BY id")
            oids = [a.type.oid for a in (await conn.prepare("SELECT i, r, t, b, n, f FROM typed")).get_attributes()]
            return oids, [tuple(r) for r in rows]
        finally:
            await conn.close()

    oids, rows = await in_asyncio(go)
    assert oids == [20, 701, 25, 17, 1700, 16]  # int8, float8, text, bytea, numeric, bool
    assert rows == [
        (-(2**63), -2.5, "café", b"\x00\xff", decimal.Decimal("12.25"), True),
        (2**40, math.inf, "", b"", decimal.Decimal(7), False),
        (None,) * 6,
    ]


async def test_asyncpg_fetchval_prepared_statements_and_parameters(start_pg):
    _, address = await start_pg()

    async def go():
        conn = await asyncpg_connect(address)
        try:
            seen = {"count": await conn.fetchval("SELECT count(*) FROM quakes")}
            # $1 is compared with a REAL column, $2 is a LIMIT: asyncpg sends a float and an int, in binary.
            rows = await conn.fetch("SELECT id, mag, nst FROM quakes WHERE mag > $1 ORDER BY id LIMIT $2", 6.5, 2)
            seen["rows"] = [tuple(r) for r in rows]
            stmt = await conn.prepare("SELECT id FROM quakes WHERE nst = $1 AND id BETWEEN $2 AND $3 ORDER BY id")
            seen["params"] = [p.name for p in stmt.get_parameters()]
            seen["prepared"] = [await stmt.fetchval(5, "q00000", "q99999"), await stmt.fetchval(37, "q00000", "q99999")]
            seen["in"] = await conn.fetchval("SELECT count(*) FROM quakes WHERE nst IN ($1, $2)", 5, 37)
            seen["casts"] = tuple(
                await conn.fetchrow(
                    "SELECT $1::integer AS a, $2::text AS b, $3::bytea AS c, $4::numeric AS d, $5::float8 AS e",
                    7, "x", b"\x00", decimal.Decimal("1.5"), 2.5,
                )
            )  # fmt: skip
            seen["expressions"] = tuple(await conn.fetchrow("SELECT avg(mag) AS a, upper('x') AS u, 1 AS one FROM quakes"))
            return seen
        finally:
            await conn.close()

    seen = await in_asyncio(go)
    assert seen["count"] == 2000  # an int, not '2000': count(*) is announced as int8
    assert seen["rows"] == [("q00036", 6.6, None), ("q00037", 6.7, 37)]
    assert seen["params"] == ["int8", "text", "text"]
    assert seen["prepared"] == ["q00005", "q00037"]
    assert seen["in"] > 0
    assert seen["casts"] == (7, "x", b"\x00", decimal.Decimal("1.5"), 2.5)
    assert isinstance(seen["expressions"][0], float) and seen["expressions"][1:] == ("X", 1)


async def test_asyncpg_errors_carry_sqlstate(start_pg):
    _, address = await start_pg()

    async def go():
        conn = await asyncpg_connect(address)
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM nowhere")
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.fetch("SELEC 1")
            return await conn.fetchval("SELECT 1")  # the connection still works
        finally:
            await conn.close()

    assert await in_asyncio(go) == 1


async def test_asyncpg_catalog_and_builtins(start_pg):
    _, address = await start_pg()

    async def go():
        conn = await asyncpg_connect(address)
        try:
            return (
                # Described before it runs: $1 is compared with pg_type.oid, so asyncpg sends an int.
                [tuple(r) for r in await conn.fetch("SELECT typname, typlen FROM pg_type WHERE oid = $1", 20)],
                await conn.fetchval("SELECT current_database()"),
                await conn.fetchval("SHOW server_version"),
                await conn.fetchval("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = $1", "quakes"),
            )
        finally:
            await conn.close()

    assert await in_asyncio(go) == ([("int8", 8)], "quakes", "15.0 (trionet)", 1)


async def test_asyncpg_transactions_executemany_and_copy(start_pg, typed_db):
    _, address = await start_pg(db=typed_db, read_write=True)

    async def go():
        conn = await asyncpg_connect(address)
        try:
            await conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, score REAL)")
            async with conn.transaction():
                # $1 and $2 take the types of body and score from the INSERT's column list.
                await conn.executemany("INSERT INTO notes (body, score) VALUES ($1, $2)", [("a", 1.5), ("b", 2.5)])
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO notes (body) VALUES ('rolled back')")
                    raise RuntimeError
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                await conn.copy_from_table("notes", output="/dev/null")
            return [tuple(r) for r in await conn.fetch("SELECT id, body, score FROM notes ORDER BY id")]
        finally:
            await conn.close()

    assert await in_asyncio(go) == [(1, "a", 1.5), (2, "b", 2.5)]


# --- pg8000 -------------------------------------------------------------------------------------


async def test_pg8000_native_queries_with_parameters(start_pg, typed_db):
    _, address = await start_pg(db=typed_db)

    def go():
        host, port = address
        conn = pg8000.native.Connection("analyst", host=host, port=port, database="quakes", timeout=10)
        try:
            return (
                conn.run("SELECT count(*) FROM typed"),
                conn.run("SELECT id, r, t FROM typed WHERE i > :low AND t = :t", low=0, t=""),
                conn.run("SELECT b, n, f FROM typed WHERE id = :id", id=1),
                conn.run("SELECT id FROM typed WHERE i IS NULL"),
            )
        finally:
            conn.close()

    count, by_params, kinds, nulls = await trio.to_thread.run_sync(go)
    assert count == [[3]]
    assert by_params == [[2, math.inf, ""]]
    assert kinds == [[b"\x00\xff", decimal.Decimal("12.25"), True]]
    assert nulls == [[3]]


# --- SQLAlchemy 2 with psycopg -------------------------------------------------------------------


async def in_engine(address, fn):
    """``fn(engine)`` in a worker thread, with an SQLAlchemy engine (psycopg driver, no pool) on the server."""
    host, port = address

    def run():
        engine = sa.create_engine(f"postgresql+psycopg://analyst@{host}:{port}/quakes", poolclass=sa.pool.NullPool)
        try:
            return fn(engine)
        finally:
            engine.dispose()

    return await trio.to_thread.run_sync(run)


async def test_sqlalchemy_connects_queries_and_reflects(start_pg):
    _, (host, port) = await start_pg()

    def go(engine):
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, mag FROM quakes WHERE mag > :m ORDER BY id LIMIT 2"), {"m": 6.5}
            ).all()
        inspector = sa.inspect(engine)
        columns = [(c["name"], type(c["type"]).__name__) for c in inspector.get_columns("quakes")]
        tables = sorted(inspector.get_table_names())
        pk = inspector.get_pk_constraint("quakes")["constrained_columns"]
        indexes = sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes("quakes"))
        metadata = sa.MetaData()
        metadata.reflect(engine)
        quakes = metadata.tables["quakes"]
        with engine.connect() as conn:
            core = conn.execute(sa.select(quakes.c.id).where(quakes.c.nst == 37).order_by(quakes.c.id).limit(1)).all()
        return rows, columns, tables, pk, indexes, core

    rows, columns, tables, pk, indexes, core = await in_engine((host, port), go)
    assert [tuple(r) for r in rows] == [("q00036", 6.6), ("q00037", 6.7)]
    assert columns == [
        ("id", "TEXT"), ("time", "TEXT"), ("mag", "DOUBLE_PRECISION"), ("place", "TEXT"), ("nst", "BIGINT")
    ]
    assert tables == ["kinds", "quakes"]
    assert pk == ["id"]
    assert indexes == [("quakes_mag", ("mag",)), ("quakes_time", ("time",))]
    assert [tuple(r) for r in core] == [("q00037",)]


async def test_sqlalchemy_reflects_multi_column_primary_keys_with_their_names(start_pg, tmp_path):
    db = tmp_path / "keys.sqlite"
    make_db(
        db,
        "create table pair (a text not null, b integer, c real, constraint pair_key primary key (b, a));"
        "create table rowid_key (id integer primary key, v text);"
        "create table bare (k text, j integer, primary key (j, k)) without rowid;"
        "create index pair_cb on pair (c, b);"
    )
    _, (host, port) = await start_pg(db=db)

    def go(engine):
        inspector = sa.inspect(engine)
        keys = {name: inspector.get_pk_constraint(name) for name in ("pair", "rowid_key", "bare")}
        indexes = [(i["name"], i["column_names"]) for i in inspector.get_indexes("pair")]
        metadata = sa.MetaData()
        metadata.reflect(engine)
        return {name: (key["name"], key["constrained_columns"]) for name, key in keys.items()}, [
            c.name for c in metadata.tables["pair"].primary_key.columns
        ], indexes

    keys, reflected, indexes = await in_engine((host, port), go)
    assert keys == {
        "pair": ("pair_key", ["b", "a"]),  # the key's own order and its CONSTRAINT name
        "rowid_key": ("rowid_key_pkey", ["id"]),  # INTEGER PRIMARY KEY: the rowid, PostgreSQL's default name
        "bare": ("bare_pkey", ["j", "k"]),  # WITHOUT ROWID
    }
    assert reflected == ["b", "a"]
    assert indexes == [("pair_cb", ["c", "b"])]  # the key of many columns, not the primary key's


async def test_sqlalchemy_reflects_foreign_keys_unique_and_check_constraints(start_pg, tmp_path):
    db = tmp_path / "fk.sqlite"
    make_db(
        db,
        "create table parent (id integer primary key, code text unique, a integer, b integer, constraint parent_ab unique (a, b));"
        "create table child (id integer primary key, parent_id integer references parent(id) on delete cascade,"
        " a integer, b integer, qty integer check (qty > 0),"
        " constraint child_ab_fkey foreign key (a, b) references parent (a, b), constraint positive check (a >= 0 and b >= 0));"
    )
    _, (host, port) = await start_pg(db=db)

    def go(engine):
        inspector = sa.inspect(engine)
        fks = inspector.get_foreign_keys("child")
        uniques = [(u["name"], u["column_names"]) for u in inspector.get_unique_constraints("parent")]
        checks = [(c["name"], c["sqltext"]) for c in inspector.get_check_constraints("child")]
        metadata = sa.MetaData()
        child = sa.Table("child", metadata, autoload_with=engine)
        reflected = sorted(
            (fk.constraint.name, fk.parent.name, fk.target_fullname, fk.ondelete) for fk in child.foreign_keys
        )
        return fks, uniques, checks, reflected, sorted(metadata.tables)

    fks, uniques, checks, reflected, tables = await in_engine((host, port), go)
    assert fks == [
        {"name": "child_ab_fkey", "constrained_columns": ["a", "b"], "referred_schema": None, "referred_table": "parent",
         "referred_columns": ["a", "b"], "options": {}, "comment": None},
        {"name": "child_parent_id_fkey", "constrained_columns": ["parent_id"], "referred_schema": None,
         "referred_table": "parent", "referred_columns": ["id"], "options": {"ondelete": "CASCADE"}, "comment": None},
    ]  # fmt: skip
    assert uniques == [("parent_ab", ["a", "b"]), ("parent_code_key", ["code"])]  # not sqlite_autoindex_parent_N
    assert checks == [("child_qty_check", "qty > 0"), ("positive", "a >= 0 and b >= 0")]
    assert reflected == [
        ("child_ab_fkey", "a", "parent.a", None),
        ("child_ab_fkey", "b", "parent.b", None),
        ("child_parent_id_fkey", "parent_id", "parent.id", "CASCADE"),
    ]
    assert tables == ["child", "parent"]  # autoload_with followed the keys to the parent table


async def test_sqlalchemy_orm_writes(start_pg, typed_db):
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    _, (host, port) = await start_pg(db=typed_db, read_write=True)

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "notes"
        id = mapped_column(sa.Integer, primary_key=True)
        body = mapped_column(sa.Text, nullable=False)

    def go(engine):
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
        with Session(engine) as session:
            note = Note(body="hello")
            session.add(note)
            session.commit()  # INSERT ... RETURNING id
            return note.id, [n.body for n in session.scalars(sa.select(Note).where(Note.id == note.id))]

    assert await in_engine((host, port), go) == (1, ["hello"])


# --- Describe announces what the rows carry ------------------------------------------------------

EXPRESSIONS = [
    # (expression, type of the value asyncpg reads after a Describe of the statement)
    ("count(*)", int),
    ("avg(mag)", float),
    ("max(mag)", str),  # no certain type: text, and the rows are sent as text
    ("sum(nst)", str),
    ("mag * 2", str),
    ("upper(place)", str),
    ("length(place)", int),
    ("CAST(nst AS REAL)", float),
    ("CAST(mag AS INTEGER)", int),
    ("CAST(mag AS TEXT)", str),
    ("1", int),
    ("2.5", float),
    ("'x'", str),
    ("NULL", type(None)),
    ("typeof(mag)", str),
]


@pytest.mark.parametrize(("expression", "kind"), EXPRESSIONS, ids=[e for e, _ in EXPRESSIONS])
async def test_describe_announces_the_types_the_rows_carry(start_pg, expression, kind):
    _, address = await start_pg()
    sql = f"SELECT {expression} AS v FROM quakes WHERE nst IS NOT NULL GROUP BY nst % 3 ORDER BY 1 LIMIT 3"

    async def go():
        conn = await asyncpg_connect(address)
        try:
            stmt = await conn.prepare(sql)  # Parse + Describe of the statement, before any row exists
            announced = stmt.get_attributes()[0].type.name
            rows = await stmt.fetch()  # binary where asyncpg can: each value decoded as announced
            return announced, [r[0] for r in rows]
        finally:
            await conn.close()

    announced, values = await in_asyncio(go)
    assert {"int8": int, "float8": float, "text": str}[announced] in (kind, str)
    assert values and all(isinstance(v, kind) for v in values)

    def psycopg_binary():
        # The other path: psycopg describes the portal, after the first batch ran.
        import psycopg

        host, port = address
        with psycopg.connect(host=host, port=port, dbname="quakes", user="analyst", autocommit=True) as conn:
            cur = conn.cursor(binary=True)
            cur.execute(sql)
            return [r[0] for r in cur.fetchall()]

    assert len(await trio.to_thread.run_sync(psycopg_binary)) == len(values)

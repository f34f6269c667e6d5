"""Enough of PostgreSQL's ``pg_catalog`` for psql's ``\\dt`` and ``\\d table``, built from SQLite's schema.

A statement that names ``pg_catalog`` is not run on the database: it is
rewritten (``pg_catalog.`` prefixes, ``~`` regex operators, ``::`` casts
and ``COLLATE pg_catalog.default`` removed or turned into SQLite) and run on
a private in-memory SQLite database holding a few catalog tables
(``pg_namespace``, ``pg_class``, ``pg_attribute``, ``pg_type``,
``pg_index``, ...) filled from the served database's ``sqlite_schema`` and
``PRAGMA table_info``/``index_list``. The catalog database holds names
only, never a row of data.

The catalog connection runs client SQL, so it is sandboxed too: an
authorizer that allows only reading (no recursive CTE, no PRAGMA, no
ATTACH), the functions of the main sandbox's allow-list plus the few
PostgreSQL functions psql calls, bounded regular expressions, the length
limits, and a budget of VM instructions per statement.

Everything here blocks; the executor calls :func:`run` in a worker thread.
"""

from __future__ import annotations

import re
import sqlite3

from trionet.sql import sandbox
from trionet.sql.engine import Session, SqlError
from trionet.sql.pg import types
from trionet.sql.pg.describe import declared_types, null_params
from trionet.sql.pg.statements import split

__all__ = ["rewrite", "run"]

_REWRITES = (
    (re.compile(r"\bpg_catalog\s*\.\s*", re.IGNORECASE), ""),
    (re.compile(r"OPERATOR\s*\(\s*~\s*\)", re.IGNORECASE), " REGEXP "),
    (re.compile(r"OPERATOR\s*\(\s*!~\s*\)", re.IGNORECASE), " NOT REGEXP "),
    (re.compile(r"!~\*?"), " NOT REGEXP "),
    (re.compile(r"~\*?"), " REGEXP "),
    (re.compile(r"\bCOLLATE\s+\"?default\"?", re.IGNORECASE), ""),
    (re.compile(r"::\s*\"?[A-Za-z_][\w.]*\"?(?:\[\])?"), ""),
    (re.compile(r"\barray\s*\(\s*select\b", re.IGNORECASE), "(select"),
    (re.compile(r"=\s*any\s*\(", re.IGNORECASE), " IN ("),
)
_OID_BASE = 16384  # PostgreSQL's first user OID
_MAIN_NAMESPACE = 2200
_STEP_BUDGET = 200  # progress-handler calls of 1000 VM instructions: 200 000 instructions per statement
_MAX_REGEX_QUANTIFIERS = 3
_MAX_REGEX_SUBJECT = 128

_TYPES = ((16, "bool"), (17, "bytea"), (20, "int8"), (25, "text"), (701, "float8"), (1700, "numeric"))  # oid, typname
_TYPE_NAMES = {16: "boolean", 17: "bytea", 20: "bigint", 25: "text", 701: "double precision", 1700: "numeric"}  # format_type

_SCHEMA = """
CREATE TABLE pg_namespace (oid INTEGER PRIMARY KEY, nspname TEXT, nspowner INTEGER);
CREATE TABLE pg_am (oid INTEGER PRIMARY KEY, amname TEXT);
CREATE TABLE pg_type (oid INTEGER PRIMARY KEY, typname TEXT, typnamespace INTEGER, typcollation INTEGER);
CREATE TABLE pg_class (
    oid INTEGER PRIMARY KEY, relname TEXT, relnamespace INTEGER, relkind TEXT, relowner INTEGER,
    relam INTEGER, relchecks INTEGER, relhasindex BOOLEAN, relhasrules BOOLEAN, relhastriggers BOOLEAN,
    relrowsecurity BOOLEAN, relforcerowsecurity BOOLEAN, relispartition BOOLEAN, reltablespace INTEGER,
    reloftype INTEGER, relpersistence TEXT, relreplident TEXT, reltoastrelid INTEGER, relnatts INTEGER,
    relhasoids BOOLEAN, reloptions TEXT, relpartbound TEXT
);
CREATE TABLE pg_attribute (
    attrelid INTEGER, attname TEXT, atttypid INTEGER, atttypmod INTEGER, attnum INTEGER,
    attnotnull BOOLEAN, atthasdef BOOLEAN, attisdropped BOOLEAN, attidentity TEXT, attgenerated TEXT,
    attcollation INTEGER, attstattarget INTEGER, attstorage TEXT, attcompression TEXT
);
CREATE TABLE pg_attrdef (oid INTEGER PRIMARY KEY, adrelid INTEGER, adnum INTEGER, adbin TEXT);
CREATE TABLE pg_collation (oid INTEGER PRIMARY KEY, collname TEXT);
CREATE TABLE pg_index (
    indexrelid INTEGER, indrelid INTEGER, indisprimary BOOLEAN, indisunique BOOLEAN,
    indisclustered BOOLEAN, indisvalid BOOLEAN, indisreplident BOOLEAN, indkey TEXT, indnullsnotdistinct BOOLEAN
);
CREATE TABLE pg_constraint (
    oid INTEGER PRIMARY KEY, conname TEXT, conrelid INTEGER, contype TEXT, condeferrable BOOLEAN,
    condeferred BOOLEAN, conindid INTEGER, confrelid INTEGER, conparentid INTEGER, conislocal BOOLEAN,
    connamespace INTEGER, convalidated BOOLEAN
);
CREATE TABLE pg_description (objoid INTEGER, classoid INTEGER, objsubid INTEGER, description TEXT);
CREATE TABLE pg_inherits (inhrelid INTEGER, inhparent INTEGER, inhseqno INTEGER, inhdetachpending BOOLEAN);
CREATE TABLE pg_trigger (oid INTEGER PRIMARY KEY, tgrelid INTEGER, tgname TEXT, tgisinternal BOOLEAN, tgenabled TEXT, tgparentid INTEGER);
CREATE TABLE pg_policy (
    oid INTEGER PRIMARY KEY, polname TEXT, polrelid INTEGER, polpermissive BOOLEAN, polroles TEXT,
    polqual TEXT, polwithcheck TEXT, polcmd TEXT
);
CREATE TABLE pg_rewrite (oid INTEGER PRIMARY KEY, rulename TEXT, ev_class INTEGER);
CREATE TABLE pg_statistic_ext (
    oid INTEGER PRIMARY KEY, stxname TEXT, stxrelid INTEGER, stxnamespace INTEGER, stxkind TEXT, stxstattarget INTEGER
);
CREATE TABLE pg_publication (oid INTEGER PRIMARY KEY, pubname TEXT, puballtables BOOLEAN);
CREATE TABLE pg_publication_rel (prpubid INTEGER, prrelid INTEGER);
CREATE TABLE pg_publication_namespace (pnpubid INTEGER, pnnspid INTEGER);
CREATE TABLE pg_foreign_table (ftrelid INTEGER);
CREATE TABLE pg_partitioned_table (partrelid INTEGER);
CREATE TABLE pg_tablespace (oid INTEGER PRIMARY KEY, spcname TEXT);
CREATE TABLE pg_database (oid INTEGER PRIMARY KEY, datname TEXT, datdba INTEGER, encoding INTEGER,
    datcollate TEXT, datctype TEXT, datacl TEXT);
CREATE TABLE pg_roles (oid INTEGER PRIMARY KEY, rolname TEXT);
"""


def rewrite(sql: str) -> str:
    """PostgreSQL-isms psql uses in its catalog queries, in SQLite's terms."""
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    return sql


def _decltype_oid(decltype: str) -> int:
    return types.decltype_oid(decltype) or types.TEXT


def _format_type(oid, typmod) -> str | None:
    if oid is None:
        return None
    return _TYPE_NAMES.get(oid, "text")


_ALWAYS_EMPTY = re.compile(r"\bpg_publication\b", re.IGNORECASE)  # no publications in SQLite
_NESTED_QUANTIFIER = re.compile(r"\)[*+?{]|[*+?}][*+?{]")


def _regexp(pattern, value):
    # psql's patterns are anchored names (^(quakes)$, ^(qu.*)$). Python's re
    # backtracks, so patterns that could take exponential or high-polynomial
    # time (a quantified group, stacked quantifiers, many quantifiers) are
    # refused, and long subjects never match.
    if pattern is None or value is None:
        return None
    pattern, value = str(pattern), str(value)
    if len(pattern) > 256 or _NESTED_QUANTIFIER.search(pattern) or sum(map(pattern.count, "*+?{")) > _MAX_REGEX_QUANTIFIERS:
        raise ValueError("regular expression too complex for trionet's catalog")
    if len(value) > _MAX_REGEX_SUBJECT:
        return 0
    try:
        return 1 if re.search(pattern, value) else 0
    except re.error:
        raise ValueError("invalid regular expression") from None


_CATALOG_FUNCTIONS = {
    "regexp": (2, _regexp),
    "pg_table_is_visible": (1, lambda oid: 1),
    "pg_get_userbyid": (1, None),  # set per connection: the session's user
    "format_type": (2, _format_type),
    "pg_get_expr": (-1, lambda expr, *_: expr),
    "obj_description": (-1, lambda *_: None),
    "col_description": (-1, lambda *_: None),
    "shobj_description": (-1, lambda *_: None),
    "pg_get_indexdef": (-1, None),  # set per connection
    "pg_get_constraintdef": (-1, lambda *_: None),
    "pg_get_statisticsobjdef_columns": (1, lambda _: None),
    "pg_encoding_to_char": (1, lambda _: "UTF8"),
    "array_to_string": (-1, lambda value, *_: value),
    "pg_total_relation_size": (1, lambda _: 0),
    "pg_relation_size": (1, lambda _: 0),
    "pg_size_pretty": (1, lambda _: "0 bytes"),
    "version": (0, None),  # set per connection
    "current_schema": (0, lambda: "main"),
    "current_schemas": (1, lambda _: "{main}"),
    "current_database": (0, None),
    "has_table_privilege": (-1, lambda *_: 1),
    "current_setting": (-1, None),  # set per statement: the session's settings
    "pg_has_role": (-1, lambda *_: 1),
}
_ALLOWED = frozenset(_CATALOG_FUNCTIONS) | sandbox.ALLOWED_FUNCTIONS
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ})


def _authorize(action, arg1, arg2, dbname, source):
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _ALLOWED:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _schema_of(session: Session) -> tuple[list[tuple], dict[str, list[tuple]], dict[str, list[tuple]]]:
    conn = session.connection
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema"
        " WHERE name NOT LIKE 'sqlite_%' OR name LIKE 'sqlite_autoindex_%' ORDER BY rowid"
    ).fetchall()
    columns = {}
    indexes = {}
    for kind, name, _tbl, _sql in objects:
        if kind in ("table", "view"):
            columns[name] = conn.execute("SELECT cid, name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)", (name,)).fetchall()
        if kind == "index":
            indexes[name] = conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,)).fetchall()
    return objects, columns, indexes


def _build(objects, columns, indexes, *, user: str, database: str, version: str) -> sqlite3.Connection:
    cat = sqlite3.connect(":memory:", isolation_level=None)
    cat.executescript(_SCHEMA)
    cat.execute("INSERT INTO pg_namespace VALUES (?, 'main', 10), (11, 'pg_catalog', 10), (99, 'pg_toast', 10)", (_MAIN_NAMESPACE,))
    cat.execute("INSERT INTO pg_am VALUES (2, 'heap'), (403, 'btree')")
    cat.executemany("INSERT INTO pg_type VALUES (?, ?, 11, 0)", _TYPES)
    cat.execute("INSERT INTO pg_database VALUES (1, ?, 10, 6, 'C', 'C', NULL)", (database,))
    cat.execute("INSERT INTO pg_roles VALUES (10, ?)", (user,))
    oids = {name: _OID_BASE + i for i, (_kind, name, _tbl, _sql) in enumerate(objects)}
    by_table: dict[str, list[str]] = {}
    for kind, name, tbl, sql in objects:
        if kind == "index":
            by_table.setdefault(tbl, []).append(name)
    index_sql = {}
    for kind, name, tbl, sql in objects:
        oid = oids[name]
        if kind in ("table", "view"):
            cols = columns.get(name, [])
            relkind = "r" if kind == "table" else "v"
            cat.execute(
                "INSERT INTO pg_class VALUES (?, ?, ?, ?, 10, ?, 0, ?, 0, 0, 0, 0, 0, 0, 0, 'p', 'd', 0, ?, 0, NULL, NULL)",
                (oid, name, _MAIN_NAMESPACE, relkind, 2 if kind == "table" else 0, bool(by_table.get(name)), len(cols)),
            )
            for cid, col, decl, notnull, default, _pk in cols:
                cat.execute(
                    "INSERT INTO pg_attribute VALUES (?, ?, ?, -1, ?, ?, ?, 0, '', '', 0, -1, 'x', '')",
                    (oid, col, _decltype_oid(decl), cid + 1, notnull, default is not None),
                )
                if default is not None:
                    cat.execute("INSERT INTO pg_attrdef (adrelid, adnum, adbin) VALUES (?, ?, ?)", (oid, cid + 1, default))
        elif kind == "index" and tbl in oids:
            table_columns = {c[1]: c[0] + 1 for c in columns.get(tbl, [])}
            key_names = [r[0] for r in indexes.get(name, [])]
            keys = " ".join(str(table_columns.get(k, 0)) for k in key_names)
            auto = sql is None  # made by SQLite for a PRIMARY KEY or UNIQUE constraint
            primary_key = [c[1] for c in sorted(columns.get(tbl, []), key=lambda c: c[5]) if c[5]]
            primary = auto and key_names == primary_key
            unique = auto or sql.lstrip().upper().startswith("CREATE UNIQUE")
            shown = f"{tbl}_pkey" if primary else name
            cat.execute(
                "INSERT INTO pg_class VALUES (?, ?, ?, 'i', 10, 403, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'p', 'd', 0, ?, 0, NULL, NULL)",
                (oid, shown, _MAIN_NAMESPACE, len(key_names)),
            )
            cat.execute("INSERT INTO pg_index VALUES (?, ?, ?, ?, 0, 1, 0, ?, 0)", (oid, oids[tbl], primary, unique, keys))
            # PostgreSQL's form; psql prints what follows " USING ".
            listed = ", ".join(k or "<expression>" for k in key_names)
            index_sql[oid] = f"CREATE {'UNIQUE ' if unique else ''}INDEX {shown} ON main.{tbl} USING btree ({listed})"
    cat.create_function("pg_get_userbyid", 1, lambda _oid: user, deterministic=True)
    cat.create_function("pg_get_indexdef", -1, lambda oid, *_: index_sql.get(oid), deterministic=True)
    view_sql = {oids[name]: sql for kind, name, _tbl, sql in objects if kind == "view"}
    cat.create_function("pg_get_viewdef", -1, lambda oid, *_: view_sql.get(oid), deterministic=True)
    cat.create_function("version", 0, lambda: version)
    cat.create_function("current_database", 0, lambda: database)
    for name, (nargs, fn) in _CATALOG_FUNCTIONS.items():
        if fn is not None:
            cat.create_function(name, nargs, fn)
    return cat


def run(
    session: Session,
    source: str,
    params,
    *,
    user: str,
    database: str,
    version: str,
    max_rows: int,
    settings: dict[str, str] | None = None,
):
    """Run a catalog statement: returns ``(column names, declared types or None, rows)``.

    Args:
        session: the client's session (its connection reads the schema).
        source: the statement as the client sent it (``$N`` placeholders).
        params: its parameters.
        user, database, version: what ``pg_get_userbyid``, ``current_database()``
            and ``version()`` answer.
        settings: what ``current_setting(name)`` answers (by lower-case name).
        max_rows: the most rows returned.

    Raises:
        SqlError: ``denied`` for anything but reading the catalog,
            ``sql_error`` for what SQLite refuses, ``too_big`` past ``max_rows``.
    """
    objects, columns, indexes = _schema_of(session)
    cat = _build(objects, columns, indexes, user=user, database=database, version=version)
    known = settings or {}
    cat.create_function("current_setting", -1, lambda name, *_: known.get(str(name).lower()))
    try:
        rewritten = rewrite(source)
        statements = split(rewritten)
        if len(statements) != 1:
            raise SqlError("multiple_statements", "send one statement at a time")
        # Declared types (psql reads booleans as 't'/'f'), from a view made
        # before the authorizer is on: making a view runs none of its SQL.
        decls = declared_types(cat, null_params(rewritten))
        rewritten = statements[0].sql
        cat.set_authorizer(_authorize)
        steps = [0]

        def progress():
            steps[0] += 1
            return 1 if steps[0] > _STEP_BUDGET else 0

        cat.set_progress_handler(progress, 1000)
        cat.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)
        functions = sandbox.LinearFunctions(1 << 20)
        functions.install(cat)
        try:
            cursor = cat.execute(rewritten, params or ())
            names = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(max_rows + 1) if names else []
        except sqlite3.Error as exc:
            if _ALWAYS_EMPTY.search(rewritten) and not steps[0]:
                # psql's queries of publications use arrays SQLite cannot
                # parse; trionet has none of those objects, so nothing to list.
                return [], None, []
            if steps[0] > _STEP_BUDGET:
                raise SqlError("too_big", "the catalog query needs more work than the catalog emulation allows") from None
            if "not authorized" in str(exc):
                raise SqlError("denied", "only reading is allowed on the emulated pg_catalog") from None
            raise SqlError("sql_error", f"emulated pg_catalog: {exc}") from None
        finally:
            functions.close()
        if len(rows) > max_rows:
            raise SqlError("too_big", f"a catalog result holds more than {max_rows} rows")
        return names, decls, rows
    finally:
        cat.close()

"""Enough of PostgreSQL's ``pg_catalog`` for psql's ``\\dt``, ``\\d+ table``, ``\\l``, ``\\df``, ``\\du`` and SQLAlchemy's reflection, built from SQLite's schema.

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

import json
import re
import sqlite3
from dataclasses import dataclass

from trionet.sql import sandbox
from trionet.sql.engine import Session, SqlError
from trionet.sql.pg import ddl, types
from trionet.sql.pg.describe import declared_types, infer_params, null_params, view_columns
from trionet.sql.pg.statements import split

__all__ = ["describe", "rewrite", "run"]

_FIRST_REWRITES = (
    (re.compile(r"\bpg_catalog\s*\.\s*", re.IGNORECASE), ""),
    # x::regclass of a column is its relation's name (psql's "Referenced by:
    # TABLE ..."); a literal's ('16384'::regclass) stays the OID it names.
    (re.compile(r"(?<![\w.'\"])((?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)\s*::\s*regclass\b", re.IGNORECASE), r"pg_regclass(\1)"),
    # psql's \d+: a table's options and its TOAST table's, as one string
    # (trionet's tables have neither).
    (
        re.compile(
            r"array_to_string\(\s*c\.reloptions\s*\|\|\s*array\s*\(\s*select\s+'toast\.'\s*\|\|\s*x\s+from\s+"
            r"unnest\s*\(\s*tc\.reloptions\s*\)\s*x\s*\)\s*,\s*', '\s*\)",
            re.IGNORECASE,
        ),
        "c.reloptions",
    ),
    # psql's \d of a table with triggers: partitions' ancestors (there are no
    # partitions: a relation is its own only ancestor, at depth 1).
    (
        re.compile(
            r"\bpg_partition_ancestors\s*\(([^()]*)\)\s*WITH\s+ORDINALITY\s+AS\s+(\w+)\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)",
            re.IGNORECASE,
        ),
        r"(SELECT \1 AS \3, 1 AS \4) AS \2",
    ),
    # PostgreSQL's escape strings (psql's \l joins with E'\n'): SQLite's plain literal.
    (re.compile(r"\bE'((?:[^'\\]|\\.|'')*)'"), lambda m: _escape_string(m.group(1))),
)
# Then unnest() in a select list becomes a join (_unnest_in_select_lists), then:
_REWRITES = (
    (re.compile(r"OPERATOR\s*\(\s*~\s*\)", re.IGNORECASE), " REGEXP "),
    (re.compile(r"OPERATOR\s*\(\s*!~\s*\)", re.IGNORECASE), " NOT REGEXP "),
    (re.compile(r"!~\*?"), " NOT REGEXP "),
    (re.compile(r"~\*?"), " REGEXP "),
    (re.compile(r"\bCOLLATE\s+\"?default\"?", re.IGNORECASE), ""),
    (re.compile(r"::\s*\"?[A-Za-z_][\w.]*\"?(?:\[\])?"), ""),
    # psql's \du: the roles a role is a member of, as an array ({} for none).
    (re.compile(r"\barray\s*\(\s*select\s+b\.rolname\b", re.IGNORECASE), "(select '{' || coalesce(group_concat(b.rolname, ','), '') || '}'"),
    (re.compile(r"\barray\s*\(\s*select\b", re.IGNORECASE), "(select"),
    # pgJDBC's getSchemas(): the first schema of the search path.
    (
        re.compile(r"\(\s*(?:pg_catalog\s*\.\s*)?current_schemas\s*\([^()]*\)\s*\)\s*\[\s*1\s*\]", re.IGNORECASE),
        "current_schema()",
    ),
    (re.compile(r"=\s*any\s*\(\s*array\s*\[([^\]]*)\]\s*\)", re.IGNORECASE), r" IN (\1)"),
    (re.compile(r"(?:!=|<>)\s*all\s*\(\s*array\s*\[([^\]]*)\]\s*\)", re.IGNORECASE), r" NOT IN (\1)"),
    (re.compile(r"=\s*any\s*\(", re.IGNORECASE), " IN ("),
    # Set-returning functions left (not in a select list with a FROM), which
    # SQLite 3.40 has not: they run on no rows, and the rewrite keeps their
    # result columns.
    (re.compile(r"\b(?:unnest|array)\s*\(", re.IGNORECASE), "("),
    (re.compile(r"\bgenerate_subscripts\s*\(([^,()]*),[^()]*\)", re.IGNORECASE), r"(\1)"),
    (re.compile(r"\bbool_and\s*\(", re.IGNORECASE), "min("),
    (re.compile(r"\bbool_or\s*\(", re.IGNORECASE), "max("),
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _escape_string(body: str) -> str:
    """The text of an ``E'...'`` literal's body as an SQLite literal (``\\n`` and the like; octal and hex left out)."""
    text = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.DOTALL)
    return "'" + text.replace("''", "'").replace("'", "''") + "'"


_OID_BASE = 16384  # PostgreSQL's first user OID
_ROLE_OID_BASE = 1 << 30  # roles other than the client's (which is 10, the bootstrap role's): apart from objects' OIDs
_MAIN_NAMESPACE = 2200
_STEP_BUDGET = 200  # progress-handler calls of 1000 VM instructions: 200 000 instructions per statement
_MAX_REGEX_QUANTIFIERS = 3
_MAX_REGEX_SUBJECT = 128

# oid, typname, typlen, typbyval, typcategory, typarray, format_type's name: the
# types trionet announces or accepts as parameters, as PostgreSQL 15 has them.
_TYPES = (
    (16, "bool", 1, 1, "B", 1000, "boolean"),
    (17, "bytea", -1, 0, "U", 1001, "bytea"),
    (19, "name", 64, 0, "S", 1003, "name"),
    (20, "int8", 8, 1, "N", 1016, "bigint"),
    (21, "int2", 2, 1, "N", 1005, "smallint"),
    (23, "int4", 4, 1, "N", 1007, "integer"),
    (25, "text", -1, 0, "S", 1009, "text"),
    (26, "oid", 4, 1, "N", 1028, "oid"),
    (700, "float4", 4, 1, "N", 1021, "real"),
    (701, "float8", 8, 1, "N", 1022, "double precision"),
    (705, "unknown", -2, 0, "X", 0, "unknown"),
    (1042, "bpchar", -1, 0, "S", 1014, "character"),
    (1043, "varchar", -1, 0, "S", 1015, "character varying"),
    (1082, "date", 4, 1, "D", 1182, "date"),
    (1114, "timestamp", 8, 1, "D", 1115, "timestamp without time zone"),
    (1700, "numeric", -1, 0, "N", 1231, "numeric"),
)
_TYPE_NAMES = {t[0]: t[6] for t in _TYPES}  # format_type
_STORAGE = {t[0]: "p" for t in _TYPES if t[2] > 0}  # typstorage: plain when fixed-length, else extended
_TYPE_OIDS = {name: t[0] for t in _TYPES for name in (t[1], t[6])}  # to_regtype

_SCHEMA = """
CREATE TABLE pg_namespace (oid INTEGER PRIMARY KEY, nspname TEXT, nspowner INTEGER);
CREATE TABLE pg_am (oid INTEGER PRIMARY KEY, amname TEXT);
CREATE TABLE pg_type (
    oid INTEGER PRIMARY KEY, typname TEXT, typnamespace INTEGER, typowner INTEGER, typlen INTEGER,
    typbyval BOOLEAN, typtype TEXT, typcategory TEXT, typispreferred BOOLEAN, typisdefined BOOLEAN,
    typdelim TEXT, typrelid INTEGER, typsubscript TEXT, typelem INTEGER, typarray INTEGER, typinput TEXT,
    typoutput TEXT, typreceive TEXT, typsend TEXT, typmodin TEXT, typmodout TEXT, typanalyze TEXT,
    typalign TEXT, typstorage TEXT, typnotnull BOOLEAN, typbasetype INTEGER, typtypmod INTEGER,
    typndims INTEGER, typcollation INTEGER, typdefaultbin TEXT, typdefault TEXT, typacl TEXT
);
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
    datcollate TEXT, datctype TEXT, datacl TEXT, daticulocale TEXT, datlocprovider TEXT, dattablespace INTEGER);
CREATE TABLE pg_roles (oid INTEGER PRIMARY KEY, rolname TEXT, rolsuper BOOLEAN, rolinherit BOOLEAN,
    rolcreaterole BOOLEAN, rolcreatedb BOOLEAN, rolcanlogin BOOLEAN, rolreplication BOOLEAN, rolconnlimit INTEGER,
    rolpassword TEXT, rolvaliduntil TEXT, rolbypassrls BOOLEAN, rolconfig TEXT);
CREATE TABLE pg_auth_members (roleid INTEGER, member INTEGER, grantor INTEGER, admin_option BOOLEAN);
CREATE TABLE pg_language (oid INTEGER PRIMARY KEY, lanname TEXT, lanowner INTEGER, lanispl BOOLEAN,
    lanpltrusted BOOLEAN, lanplcallfoid INTEGER, laninline INTEGER, lanvalidator INTEGER, lanacl TEXT);
CREATE TABLE pg_sequence (seqrelid INTEGER, seqtypid INTEGER, seqstart INTEGER, seqincrement INTEGER,
    seqmax INTEGER, seqmin INTEGER, seqcache INTEGER, seqcycle BOOLEAN);
CREATE TABLE pg_enum (oid INTEGER PRIMARY KEY, enumtypid INTEGER, enumsortorder REAL, enumlabel TEXT);
CREATE TABLE pg_range (rngtypid INTEGER, rngsubtype INTEGER, rngmultitypid INTEGER);
CREATE TABLE pg_proc (oid INTEGER PRIMARY KEY, proname TEXT, pronamespace INTEGER, prokind TEXT, prorettype INTEGER,
    proargtypes TEXT, proretset BOOLEAN, provolatile TEXT, proparallel TEXT, prosecdef BOOLEAN, proleakproof BOOLEAN,
    prolang INTEGER, prosrc TEXT, proowner INTEGER, proacl TEXT);
CREATE TABLE pg_opclass (oid INTEGER PRIMARY KEY, opcmethod INTEGER, opcname TEXT, opsnamespace INTEGER,
    opcowner INTEGER, opcfamily INTEGER, opcintype INTEGER, opcdefault BOOLEAN, opckeytype INTEGER);
CREATE TABLE pg_extension (oid INTEGER PRIMARY KEY, extname TEXT, extversion TEXT);
"""

# Columns that no trionet object has a value of its own for, added once the
# rows are in (ALTER TABLE ADD COLUMN with a default costs nothing per row):
# SQLAlchemy's reflection names every column of its pg_catalog tables.
_DEFAULT_COLUMNS = {
    "pg_am": "amhandler TEXT DEFAULT '-', amtype TEXT DEFAULT 't'",
    "pg_attribute": "attlen INTEGER DEFAULT -1, attndims INTEGER DEFAULT 0, attcacheoff INTEGER DEFAULT -1,"
    " attbyval BOOLEAN DEFAULT 0, attalign TEXT DEFAULT 'i', atthasmissing BOOLEAN DEFAULT 0,"
    " attislocal BOOLEAN DEFAULT 1, attinhcount INTEGER DEFAULT 0",
    "pg_class": "reltype INTEGER DEFAULT 0, relfilenode INTEGER DEFAULT 0, relpages INTEGER DEFAULT 0,"
    " reltuples REAL DEFAULT -1, relallvisible INTEGER DEFAULT 0, relisshared BOOLEAN DEFAULT 0,"
    " relhassubclass BOOLEAN DEFAULT 0, relispopulated BOOLEAN DEFAULT 1, relrewrite INTEGER DEFAULT 0",
    "pg_collation": "collnamespace INTEGER DEFAULT 11, collowner INTEGER DEFAULT 10, collprovider TEXT DEFAULT 'd',"
    " collisdeterministic BOOLEAN DEFAULT 1, collencoding INTEGER DEFAULT -1, collcollate TEXT, collctype TEXT,"
    " colliculocale TEXT, collicurules TEXT, collversion TEXT",
    "pg_constraint": "contypid INTEGER DEFAULT 0, confupdtype TEXT DEFAULT 'a', confdeltype TEXT DEFAULT 'a',"
    " confmatchtype TEXT DEFAULT 's', coninhcount INTEGER DEFAULT 0, connoinherit BOOLEAN DEFAULT 1,"
    " conkey TEXT, confkey TEXT",
    "pg_index": "indnatts INTEGER DEFAULT 1, indnkeyatts INTEGER DEFAULT 1, indisexclusion BOOLEAN DEFAULT 0,"
    " indimmediate BOOLEAN DEFAULT 1, indcheckxmin BOOLEAN DEFAULT 0, indisready BOOLEAN DEFAULT 1,"
    " indislive BOOLEAN DEFAULT 1, indcollation TEXT DEFAULT '', indclass TEXT DEFAULT '',"
    " indoption TEXT DEFAULT '', indexprs TEXT, indpred TEXT",
    "pg_tablespace": "spcowner INTEGER DEFAULT 10, spcoptions TEXT",
}


_AGGREGATE = re.compile(r"\barray_agg\s*\(", re.IGNORECASE)
_ORDER_BY = re.compile(r"\s+ORDER\s+BY\s", re.IGNORECASE)


def _drop_aggregate_order(sql: str) -> str:
    # array_agg(x ORDER BY y [DESC]) -> array_agg(x, y[, 1]): SQLite 3.40 has
    # no ordered aggregates, so _ArrayAgg sorts by its second argument; an
    # order by several keys is dropped. One pass: each call is read to its
    # closing parenthesis.
    out, done = [], 0
    for match in _AGGREGATE.finditer(sql):
        if match.start() < done:
            continue
        depth, i = 1, match.end()
        while i < len(sql) and depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        if depth:
            break  # unclosed: SQLite will say so
        inner = sql[match.end() : i - 1]
        order = _ORDER_BY.search(inner)
        out.append(sql[done : match.end()])
        out.append(inner[: order.start()] if order else inner)
        if order:
            key = inner[order.end() :].strip()
            descending = re.search(r"\s+DESC\s*$", key, re.IGNORECASE)
            key = re.sub(r"\s+(?:ASC|DESC)\s*$", "", key, flags=re.IGNORECASE)
            if key and "," not in key:
                out.append(f", {key}, 1" if descending else f", {key}")
        out.append(")")
        done = i
    out.append(sql[done:])
    return "".join(out)


def rewrite(sql: str) -> str:
    """PostgreSQL-isms psql and SQLAlchemy use in their catalog queries, in SQLite's terms."""
    for pattern, replacement in _FIRST_REWRITES:
        sql = pattern.sub(replacement, sql)
    if "unnest" in sql.lower() and len(sql) <= _MAX_UNNEST_SQL and len(_UNNEST.findall(sql)) <= _MAX_UNNESTS:
        sql = _unnest_in_select_lists(sql)
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    return _drop_aggregate_order(sql) if "array_agg" in sql.lower() else sql


_UNNEST = re.compile(r"\bunnest\s*\(", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z_]\w*")
_CLAUSE_END = frozenset({"where", "group", "order", "limit", "union", "having", "window", "except", "intersect"})
_MAX_UNNESTS = 8
_MAX_UNNEST_SQL = 16384  # bytes: the rewrite reads the statement once per unnest; clients' queries are a few KiB


def _depths(sql: str) -> list[int]:
    """The parenthesis depth at each character, quoted strings and names skipped over (they keep their depth)."""
    depths, depth, quote = [], 0, None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        depths.append(depth)  # a ")" has the depth after it
    return depths


def _words_at(sql: str, depths: list[int], start: int, depth: int):
    """(position, lower-case word) of each word at ``depth`` from ``start``, until the depth drops below it."""
    scanned = start  # depths[start:scanned] are all >= depth: each character is looked at once
    for match in _WORD.finditer(sql, start):
        if min(depths[scanned : match.start() + 1], default=depth) < depth:
            return
        scanned = match.start() + 1
        if depths[match.start()] == depth and (match.start() == 0 or sql[match.start() - 1] not in "'\"."):
            yield match.start(), match.group().lower()


def _unnest_in_select_lists(sql: str) -> str:
    """``SELECT unnest(A) AS x, generate_subscripts(A, 1) AS i FROM t ...`` as a join with ``json_each``.

    SQLite has no set-returning function in a select list, but it joins a
    table-valued function whose argument names the tables to its left:
    ``... FROM t JOIN json_each(pg_array_json(A)) AS _unnest0`` gives one row
    per element, ``_unnest0.value`` is the element and ``_unnest0.key + 1``
    its subscript. An ``unnest`` that is not in the select list of a SELECT
    with a FROM is left alone, and so is a statement longer than
    :data:`_MAX_UNNEST_SQL` or with more than :data:`_MAX_UNNESTS` of them
    (each costs a pass over the statement).
    """
    for number in range(_MAX_UNNESTS):
        depths = _depths(sql)
        for match in _UNNEST.finditer(sql):
            start = match.start()
            depth = depths[start]
            end = match.end()
            while end < len(sql) and depths[end] > depth:
                end += 1
            if end >= len(sql):
                break
            argument = sql[match.end() : end]
            # The select list it is in: the SELECT before it, the FROM after it, at its depth.
            selects = [p for p, w in _words_at(sql, depths, _opening(depths, start, depth), depth) if w == "select" and p < start]
            words = [(p, w) for p, w in _words_at(sql, depths, end + 1, depth)]
            froms = [p for p, w in words if w == "from"]
            if not selects or not froms or any(w == "from" and selects[-1] < p < start for p, w in
                                              _words_at(sql, depths, selects[-1], depth)):
                continue
            after_from = [p for p, w in words if p > froms[0] and w in _CLAUSE_END]
            clause_end = after_from[0] if after_from else _closing(depths, froms[0], depth, len(sql))
            alias = f"_unnest{number}"
            joined = f" JOIN json_each(pg_array_json({argument})) AS {alias} "
            select_list = sql[end + 1 : froms[0]]
            subscripts = re.compile(r"\bgenerate_subscripts\s*\(\s*" + re.escape(argument) + r"\s*,[^()]*(?:\([^()]*\)[^()]*)*\)", re.IGNORECASE)
            select_list = subscripts.sub(f"({alias}.key + 1)", select_list)
            select_list = _zip_unnests(select_list, alias)
            sql = (
                sql[:start] + f"{alias}.value" + select_list + sql[froms[0] : clause_end].rstrip()
                + joined + sql[clause_end:]
            )  # fmt: skip
            break
        else:
            return sql
    return sql


def _zip_unnests(select_list: str, alias: str) -> str:
    """Further ``unnest(B)`` of a select list read B's element at the first one's position (PostgreSQL zips them)."""
    out, done = [], 0
    for match in _UNNEST.finditer(select_list):
        if match.start() < done:
            continue
        depth, i = 1, match.end()
        while i < len(select_list) and depth:
            depth += {"(": 1, ")": -1}.get(select_list[i], 0)
            i += 1
        if depth:
            break
        out.append(select_list[done : match.start()])
        out.append(f"pg_array_item({select_list[match.end() : i - 1]}, {alias}.key)")
        done = i
    out.append(select_list[done:])
    return "".join(out)


def _array_item(value, index):
    """Element ``index`` (from 0) of a PostgreSQL array's text, NULL past its end."""
    items = json.loads(_array_json(value))
    return items[index] if isinstance(index, int) and 0 <= index < len(items) else None


def _opening(depths: list[int], position: int, depth: int) -> int:
    """Where the parenthesised expression holding ``position`` (at ``depth``) starts."""
    while position > 0 and depths[position - 1] >= depth:
        position -= 1
    return position


def _closing(depths: list[int], position: int, depth: int, default: int) -> int:
    """The first position past ``position`` where the depth drops below ``depth`` (its ``)``)."""
    for i in range(position, len(depths)):
        if depths[i] < depth:
            return i
    return default


def _array_json(value) -> str:
    """A PostgreSQL array's text (``{1,2}``, or an int2vector's ``1 2``) as a JSON array, for ``json_each``."""
    if value is None:
        return "[]"
    items = [item for item in re.split(r"[\s,]+", str(value).strip().strip("{}")) if item]
    return json.dumps([int(item) if re.fullmatch(r"-?\d+", item) else item.strip('"') for item in items])


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


def _json_object(*pairs):
    return json.dumps(dict(zip(pairs[::2], pairs[1::2])))


_ARRAY_MARK = "\x1e"  # starts array_agg's results, so run() can announce the column as an array


class _ArrayAgg:
    """array_agg, as PostgreSQL's text form of a one-dimensional array of int8 or text.

    ``array_agg(x, key[, descending])`` is ``array_agg(x ORDER BY key [DESC])``
    (NULL keys last, as PostgreSQL's ascending order puts them).
    """

    def __init__(self) -> None:
        self.items: list = []
        self.keys: list = []
        self.descending = False

    def step(self, value, key=None, descending=0) -> None:
        if len(self.items) < 1000:
            self.items.append(value)
            self.keys.append(key)
            self.descending = bool(descending)

    def finalize(self) -> str:
        if any(key is not None for key in self.keys):
            keyed = [(key is None, key if key is not None else 0, i) for i, key in enumerate(self.keys)]
            try:
                keyed.sort(reverse=self.descending)
            except TypeError:  # keys of several types: left in arrival order
                keyed.sort(key=lambda k: k[2])
            self.items = [self.items[i] for _, _, i in keyed]
        values = [v for v in self.items if v is not None]
        if all(type(v) is int for v in values):
            kind, text = "_INT8", ["NULL" if v is None else str(v) for v in self.items]
        else:
            kind = "_TEXT"
            text = [
                "NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in self.items
            ]
        return f"{_ARRAY_MARK}{kind}{{{','.join(text)}}}"


def _arrays(decls: list[str] | None, names: list[str], rows: list) -> tuple[list[str] | None, list]:
    # Columns array_agg made: their type from the mark, the mark taken off.
    marked = {
        i for row in rows for i, v in enumerate(row) if type(v) is str and v.startswith(_ARRAY_MARK)
    }
    if not marked:
        return decls, rows
    decls = list(decls) if decls and len(decls) == len(names) else [""] * len(names)
    kinds = {}
    for row in rows:
        for i in marked:
            v = row[i]
            if type(v) is str and v.startswith(_ARRAY_MARK):
                kind = v[1:6]
                kinds[i] = kind if kinds.get(i, kind) == kind else "_TEXT"  # {1,2} is a text[] too
    for i, kind in kinds.items():
        decls[i] = kind
    fixed = [
        tuple(v[6:] if i in marked and type(v) is str and v.startswith(_ARRAY_MARK) else v for i, v in enumerate(row))
        for row in rows
    ]
    return decls, fixed


_CATALOG_FUNCTIONS = {
    "regexp": (2, _regexp),
    "pg_table_is_visible": (1, lambda oid: 1),
    "pg_type_is_visible": (1, lambda oid: 1),
    "pg_collation_is_visible": (1, lambda oid: 1),
    "pg_function_is_visible": (1, lambda oid: 1),
    "pg_get_partkeydef": (1, lambda oid: None),
    "quote_ident": (1, lambda name: name),
    "pg_get_userbyid": (1, None),  # set per connection: the session's user
    "format_type": (2, _format_type),
    "pg_get_expr": (-1, lambda expr, *_: expr),
    "obj_description": (-1, lambda *_: None),
    "col_description": (-1, lambda *_: None),
    "shobj_description": (-1, lambda *_: None),
    "pg_get_indexdef": (-1, None),  # set per connection
    "pg_get_constraintdef": (-1, None),  # set per connection
    "pg_regclass": (1, None),  # set per connection: an OID's relation name, for x::regclass
    "pg_partition_ancestors": (1, lambda oid: oid),  # no partitions: a relation is its only ancestor
    "pg_get_statisticsobjdef_columns": (1, lambda _: None),
    "pg_get_triggerdef": (-1, lambda *_: None),  # pg_trigger has no rows
    "pg_encoding_to_char": (1, lambda _: "UTF8"),
    "array_to_string": (-1, lambda value, *_: value),
    "pg_total_relation_size": (1, lambda _: 0),
    "pg_relation_size": (1, lambda _: 0),
    "pg_size_pretty": (1, lambda size: None if size is None else "0 bytes"),
    # psql's \dt+, \di+, \l+: sizes are not known to the catalog (shown blank).
    "pg_table_size": (1, lambda _: None),
    "pg_database_size": (1, lambda _: None),
    "version": (0, None),  # set per connection
    "current_schema": (0, lambda: "main"),
    "json_build_object": (-1, _json_object),
    "pg_get_serial_sequence": (2, lambda *_: None),
    "to_regtype": (1, lambda name: _TYPE_OIDS.get(str(name).lower()) if name is not None else None),
    "current_schemas": (1, lambda _: "{main}"),
    "current_database": (0, None),
    "has_table_privilege": (-1, lambda *_: 1),
    "has_database_privilege": (-1, lambda *_: 1),
    "current_setting": (-1, None),  # set per statement: the session's settings
    "pg_has_role": (-1, lambda *_: 1),
    "pg_array_json": (1, _array_json),
    "pg_array_item": (2, _array_item),
    # psql's \df: pg_proc has no rows (SQLite has no stored functions), but the query must run.
    "pg_get_function_result": (1, lambda _: None),
    "pg_get_function_arguments": (1, lambda _: None),
    "pg_get_function_identity_arguments": (1, lambda _: None),
    "pg_get_function_sqlbody": (1, lambda _: None),  # psql's \df+
}
_ALLOWED = frozenset(_CATALOG_FUNCTIONS) | sandbox.ALLOWED_FUNCTIONS | {"array_agg", "pg_get_viewdef"}
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ})


def _authorize(action, arg1, arg2, dbname, source):
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _ALLOWED:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _schema_of(session: Session) -> tuple[list[tuple], dict[str, list[tuple]], dict[str, list[tuple]], dict[str, list[tuple]]]:
    """sqlite_schema's objects, and by name: columns (tables, views), key columns (indexes), foreign keys (tables)."""
    conn = session.connection
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema"
        " WHERE name NOT LIKE 'sqlite_%' OR name LIKE 'sqlite_autoindex_%' ORDER BY rowid"
    ).fetchall()
    columns = {}
    indexes = {}
    foreign_keys = {}
    for kind, name, _tbl, _sql in objects:
        if kind in ("table", "view"):
            columns[name] = conn.execute("SELECT cid, name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)", (name,)).fetchall()
        if kind == "table":
            foreign_keys[name] = conn.execute(
                "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete, match FROM pragma_foreign_key_list(?)"
                " ORDER BY id, seq",
                (name,),
            ).fetchall()
        if kind == "index":
            indexes[name] = conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,)).fetchall()
    return objects, columns, indexes, foreign_keys


_INFORMATION_SCHEMA = """
CREATE TABLE information_schema.schemata (catalog_name TEXT, schema_name TEXT, schema_owner TEXT);
CREATE TABLE information_schema.tables (
    table_catalog TEXT, table_schema TEXT, table_name TEXT, table_type TEXT, is_insertable_into TEXT
);
CREATE TABLE information_schema.columns (
    table_catalog TEXT, table_schema TEXT, table_name TEXT, column_name TEXT, ordinal_position INTEGER,
    column_default TEXT, is_nullable TEXT, data_type TEXT, character_maximum_length INTEGER,
    numeric_precision INTEGER, numeric_scale INTEGER, udt_name TEXT, is_identity TEXT, is_generated TEXT
);
CREATE TABLE information_schema.views (table_catalog TEXT, table_schema TEXT, table_name TEXT, view_definition TEXT);
"""


def _information_schema(cat: sqlite3.Connection, database: str, user: str) -> None:
    # The SQL standard's views of the same names, as tables of an attached
    # in-memory schema (Grafana's and DBeaver's query builders read them).
    cat.execute("ATTACH DATABASE ':memory:' AS information_schema")
    cat.executescript(_INFORMATION_SCHEMA)
    cat.execute(
        "INSERT INTO information_schema.schemata SELECT ?1, nspname, ?2 FROM pg_namespace", (database, user)
    )
    cat.execute(
        "INSERT INTO information_schema.tables SELECT ?1, n.nspname, c.relname,"
        " CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'BASE TABLE' END, CASE c.relkind WHEN 'v' THEN 'NO' ELSE 'YES' END"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'v')",
        (database,),
    )
    cat.execute(
        "INSERT INTO information_schema.columns SELECT ?1, 'main', c.relname, a.attname, a.attnum, d.adbin,"
        " CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END, format_type(a.atttypid, a.atttypmod), NULL,"
        " CASE a.atttypid WHEN 20 THEN 64 WHEN 701 THEN 53 END, CASE a.atttypid WHEN 20 THEN 0 END,"
        " t.typname, 'NO', 'NEVER'"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum",
        (database,),
    )
    cat.execute(
        "INSERT INTO information_schema.views SELECT ?1, 'main', c.relname, pg_get_viewdef(c.oid)"
        " FROM pg_class c WHERE c.relkind = 'v'",
        (database,),
    )


_VIEW_HEAD = re.compile(
    r"\s*CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:\"(?:[^\"]|\"\")*\"|\[[^\]]*\]|`[^`]*`|[^\s(]+)\s*(?:\([^()]*\)\s*)?AS\s",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Index:
    oid: int
    name: str  # as PostgreSQL would show it: TABLE_pkey, or the PRIMARY KEY constraint's own name
    table: str
    key_names: list[str]
    keys: list[int]  # attnums, 0 for an expression
    primary: bool
    unique: bool
    constraint: str | None  # pg_constraint.contype: "p", "u", or None for a plain index


_PK_NAME = re.compile(
    r"\bCONSTRAINT\s+(\"(?:[^\"]|\"\")+\"|\[[^\]]+\]|`[^`]+`|\w+)\s+PRIMARY\s+KEY\b", re.IGNORECASE
)


def _primary_key_name(table: str, sql: str | None) -> str:
    """``CONSTRAINT name PRIMARY KEY`` of a table's SQL, unquoted, else PostgreSQL's default ``TABLE_pkey``."""
    match = _PK_NAME.search(sql or "")
    if not match:
        return _object_name(table, "", "pkey")
    name = match.group(1)
    if name[0] in "\"[`":
        name = name[1:-1].replace('""', '"') if name[0] == '"' else name[1:-1]
    return name


# PostgreSQL's keywords that quote_ident quotes (all but the unreserved ones).
_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization between bigint binary bit boolean both case cast
char character check coalesce collate collation column concurrently constraint create cross current_catalog
current_date current_role current_schema current_time current_timestamp current_user dec decimal default deferrable
desc distinct do else end except exists extract false fetch float for foreign freeze from full grant greatest group
grouping having ilike in initially inner inout int integer intersect interval into is isnull join lateral leading
least left like limit localtime localtimestamp national natural nchar none normalize not notnull null nullif numeric
offset on only or order out outer overlaps overlay placing position precision primary real references returning
right row select session_user setof similar smallint some substring symmetric system_user table tablesample then time
timestamp to trailing treat trim true union unique user using values varchar variadic verbose when where window with
""".split())


def _ident(name: str) -> str:
    """A name as PostgreSQL's ``quote_ident`` writes it: bare when lower-case and not a keyword, else double-quoted."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _idents(names) -> str:
    return ", ".join(_ident(n) for n in names)


_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def _object_name(table: str, columns: str, label: str) -> str:
    """PostgreSQL's ``makeObjectName``: ``table_columns_label`` in 63 bytes, the longer part shortened first."""
    first, second = table.encode(), columns.encode()
    room = _NAME_BYTES - len(label.encode()) - 1 - (1 if columns else 0)
    keep1, keep2 = len(first), len(second)
    while keep1 + keep2 > room and keep1 + keep2 > 0:
        if keep1 > keep2:
            keep1 -= 1
        else:
            keep2 -= 1
    parts = [first[:keep1].decode("utf-8", "ignore"), second[:keep2].decode("utf-8", "ignore") if columns else None, label]
    return "_".join(p for p in parts if p is not None)


class _Names:
    """Constraint names as PostgreSQL chooses them: the one written, else ``TABLE_COLUMNS_LABEL``, numbered if taken.

    As in PostgreSQL, a foreign key's or a CHECK's name must differ from the
    schema's other constraint names (every ``CONSTRAINT name`` written, and
    the names chosen so far), a UNIQUE constraint's also from every
    relation's (its index bears it); compared without case, as SQLite does.
    """

    def __init__(self, objects) -> None:
        self.relations = {name.lower() for _kind, name, _tbl, _sql in objects}
        self.constraints = set()
        for kind, name, _tbl, sql in objects:
            if kind == "table":
                self.constraints.update(c.name.lower() for c in ddl.table_constraints(sql) if c.name)
                self.constraints.add(_primary_key_name(name, sql).lower())

    def choose(self, table: str, columns, label: str) -> str:
        joined = "_".join(columns)
        taken = self.constraints | self.relations if label == "key" else self.constraints
        name, number = _object_name(table, joined, label), 0
        while name.lower() in taken:
            number += 1
            name = _object_name(table, joined, f"{label}{number}")
        self.constraints.add(name.lower())
        if label == "key":
            self.relations.add(name.lower())
        return name

    def unique(self, table: str, sql: str | None, key_names) -> str:
        wanted = [k.lower() for k in key_names]
        for constraint in ddl.table_constraints(sql):
            if constraint.kind == "u" and constraint.name and [c.lower() for c in constraint.columns] == wanted:
                return constraint.name
        return self.choose(table, key_names, "key")


@dataclass(frozen=True)
class _Constraint:
    """A foreign key or CHECK constraint's row of pg_constraint, and its ``pg_get_constraintdef`` (pretty, plain)."""

    name: str
    table: str
    kind: str  # "f" or "c"
    keys: list[int]  # conkey
    definition: tuple[str, str]
    parent: str | None = None  # "f": confrelid's table, None when it is not in the database
    parent_keys: list[int] | None = None  # confkey
    actions: tuple[str, str, str] = ("a", "a", "s")  # confupdtype, confdeltype, confmatchtype
    deferrable: bool = False
    deferred: bool = False


_ACTIONS = {"NO ACTION": "a", "RESTRICT": "r", "CASCADE": "c", "SET NULL": "n", "SET DEFAULT": "d"}
_MATCHES = {"FULL": "f", "PARTIAL": "p"}


def _foreign_keys(table: str, sql: str | None, rows, columns, names: _Names) -> list[_Constraint]:
    """A table's foreign keys from ``PRAGMA foreign_key_list`` (rows ordered by id, seq), named from its SQL.

    A key without parent columns (``REFERENCES parent``) refers to the
    parent's primary key; one whose parent has none, or is not in the
    database, cannot be shown with its columns and is left out.
    """
    tables = {name.lower(): name for name in columns}
    written = [c for c in ddl.table_constraints(sql) if c.kind == "f"]
    found, by_id = [], {}
    for fk_id, parent, source, target, on_update, on_delete, match in rows:
        by_id.setdefault(fk_id, []).append((parent, source, target, on_update, on_delete, match))
    for _fk_id, parts in sorted(by_id.items(), reverse=True):  # SQLite numbers them from the last one written
        parent_written, _, _, on_update, on_delete, match = parts[0]
        parent = tables.get(str(parent_written).lower())
        sources = [p[1] for p in parts]
        targets = [p[2] for p in parts]
        if any(t is None for t in targets):
            if parent is None:
                continue
            targets = [c[1] for c in sorted(columns[parent], key=lambda c: c[5]) if c[5]]
            if len(targets) != len(sources):
                continue
        same = next(
            (c for c in written if [x.lower() for x in c.columns] == [x.lower() for x in sources]
             and str(c.references).lower() == str(parent_written).lower()),
            None,
        )  # fmt: skip
        if same is not None:
            written.remove(same)
        name = same.name if same is not None and same.name else names.choose(table, sources, "fkey")
        text = f"FOREIGN KEY ({_idents(sources)}) REFERENCES {_ident(parent or parent_written)}({_idents(targets)})"
        matching = _MATCHES.get(str(match).upper())
        if matching:
            text += f" MATCH {str(match).upper()}"
        for verb, action in (("UPDATE", on_update), ("DELETE", on_delete)):
            if str(action).upper() in _ACTIONS and str(action).upper() != "NO ACTION":
                text += f" ON {verb} {str(action).upper()}"
        deferrable = same is not None and same.deferrable
        deferred = same is not None and same.deferred
        text += " DEFERRABLE" * deferrable + " INITIALLY DEFERRED" * deferred
        own = {c[1].lower(): c[0] + 1 for c in columns[table]}
        theirs = {c[1].lower(): c[0] + 1 for c in columns.get(parent, [])}
        found.append(_Constraint(
            name, table, "f", [own.get(s.lower(), 0) for s in sources], (text, text), parent,
            [theirs.get(str(t).lower(), 0) for t in targets],
            (_ACTIONS.get(str(on_update).upper(), "a"), _ACTIONS.get(str(on_delete).upper(), "a"), matching or "s"),
            deferrable, deferred,
        ))  # fmt: skip
    return found


def _checks(table: str, sql: str | None, columns, names: _Names) -> list[_Constraint]:
    """A table's CHECK constraints, as its SQL wrote them; unnamed ones named as PostgreSQL would.

    PostgreSQL names a CHECK after the one column its expression reads
    (``TABLE_COLUMN_check``), or ``TABLE_check`` when it reads several.
    """
    own = {c[1].lower(): (c[1], c[0] + 1) for c in columns[table]}
    found = []
    for constraint in ddl.table_constraints(sql):
        if constraint.kind != "c":
            continue
        read = sorted((own[n] for n in ddl.identifiers(constraint.text or "") if n in own), key=lambda c: c[1])
        name = constraint.name or names.choose(table, [read[0][0]] if len(read) == 1 else [], "check")
        text = constraint.text or ""
        found.append(_Constraint(name, table, "c", [c[1] for c in read], (f"CHECK ({text})", f"CHECK (({text}))")))
    return found


def _indexes(objects, columns, indexes, oids: dict[str, int], names: _Names) -> list[_Index]:
    """Every index as pg_index shows it, with one for each primary key SQLite keeps without an index.

    SQLite makes an index (``sqlite_autoindex_*``, no SQL) for a PRIMARY KEY
    or UNIQUE constraint, except for an INTEGER PRIMARY KEY (the rowid
    itself) and a WITHOUT ROWID table's key (the table is its index): for
    those the primary key's index is made up here, as PostgreSQL has one.
    A UNIQUE constraint's index is named as PostgreSQL names both: its
    ``CONSTRAINT name``, else ``TABLE_COLUMNS_key``.
    """
    table_sql = {name: sql for kind, name, _tbl, sql in objects if kind == "table"}
    primary_keys = {
        name: [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5]] for name, cols in columns.items() if name in table_sql
    }
    found, indexed = [], set()
    for kind, name, tbl, sql in objects:
        if kind != "index" or tbl not in oids:
            continue
        table_columns = {c[1]: c[0] + 1 for c in columns.get(tbl, [])}
        key_names = [r[0] for r in indexes.get(name, [])]
        auto = sql is None  # made by SQLite for a PRIMARY KEY or UNIQUE constraint
        primary = auto and key_names == primary_keys.get(tbl) and tbl not in indexed
        unique = auto or sql.lstrip().upper().startswith("CREATE UNIQUE")
        if primary:
            indexed.add(tbl)
        if primary:
            shown = _primary_key_name(tbl, table_sql.get(tbl))
        elif auto:
            shown = names.unique(tbl, table_sql.get(tbl), key_names)
        else:
            shown = name
        found.append(_Index(
            oids[name], shown, tbl, key_names,
            [table_columns.get(k, 0) for k in key_names], primary, unique, "p" if primary else "u" if auto else None,
        ))  # fmt: skip
    next_oid = _OID_BASE + 2 * len(oids)  # past the objects' OIDs and their constraints'
    for table, key_names in primary_keys.items():
        if key_names and table not in indexed:
            table_columns = {c[1]: c[0] + 1 for c in columns[table]}
            found.append(_Index(
                next_oid, _primary_key_name(table, table_sql[table]), table, key_names,
                [table_columns[k] for k in key_names], True, True, "p",
            ))  # fmt: skip
            next_oid += 1
    return found


def _array(items) -> str:
    """A PostgreSQL array's text (``{1,2}``), as the catalog stores int2[] columns."""
    return "{" + ",".join(map(str, items)) + "}"


def _oid(value) -> int | None:
    """An OID as clients write it: an integer, or a string (psql's ``'16386'::pg_catalog.oid``)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _view_query(sql: str | None) -> str | None:
    """The query of a view, as ``pg_get_viewdef`` gives it: its ``CREATE VIEW`` without the head."""
    match = _VIEW_HEAD.match(sql or "")
    return sql[match.end() :].strip() if match else sql


def _build(
    objects, columns, indexes, foreign_keys, *, user: str, database: str, version: str, roles=()
) -> sqlite3.Connection:
    cat = sqlite3.connect(":memory:", isolation_level=None)
    cat.executescript(_SCHEMA)
    cat.execute("INSERT INTO pg_namespace VALUES (?, 'main', 10), (11, 'pg_catalog', 10), (99, 'pg_toast', 10)", (_MAIN_NAMESPACE,))
    cat.execute("INSERT INTO pg_am VALUES (2, 'heap'), (403, 'btree')")
    cat.executemany(
        "INSERT INTO pg_type VALUES (?1, ?2, 11, 10, ?3, ?4, 'b', ?5, 0, 1, ',', 0, '-', 0, ?6, ?2 || 'in',"
        " ?2 || 'out', ?2 || 'recv', ?2 || 'send', '-', '-', '-', 'i', CASE WHEN ?3 > 0 THEN 'p' ELSE 'x' END,"
        " 0, 0, -1, 0, CASE WHEN ?5 = 'S' THEN 100 ELSE 0 END, NULL, NULL, NULL)",
        [t[:6] for t in _TYPES],
    )
    cat.execute("INSERT INTO pg_database VALUES (1, ?, 10, 6, 'C', 'C', NULL, NULL, 'c', 1663)", (database,))
    cat.execute("INSERT INTO pg_tablespace (oid, spcname) VALUES (1663, 'pg_default')")
    # The roles: the users of --users (or only the client's user, when the
    # server trusts everyone). Each may log in and has no other attribute:
    # every user may do what the server allows, no more (is_superuser is off).
    role_oids = {user: 10}
    for name in roles:
        role_oids.setdefault(name, _ROLE_OID_BASE + len(role_oids))
    cat.executemany(
        "INSERT INTO pg_roles VALUES (?, ?, 0, 1, 0, 0, 1, 0, -1, '********', NULL, 0, NULL)",
        [(oid, name) for name, oid in role_oids.items()],
    )
    cat.execute("INSERT INTO pg_language (oid, lanname, lanowner, lanispl, lanpltrusted) VALUES"
                " (12, 'internal', 10, 0, 0), (13, 'c', 10, 0, 0), (14, 'sql', 10, 0, 1)")
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
                type_oid = _decltype_oid(decl)
                cat.execute(
                    "INSERT INTO pg_attribute VALUES (?, ?, ?, -1, ?, ?, ?, 0, '', '', 0, -1, ?, '')",
                    (oid, col, type_oid, cid + 1, notnull, default is not None, _STORAGE.get(type_oid, "x")),
                )
                if default is not None:
                    cat.execute("INSERT INTO pg_attrdef (adrelid, adnum, adbin) VALUES (?, ?, ?)", (oid, cid + 1, default))
    names = _Names(objects)
    constraints = []  # pg_constraint's rows, inserted once its default columns are there
    definitions = {}  # pg_get_constraintdef: oid -> (pretty, plain)
    for index in _indexes(objects, columns, indexes, oids, names):
        cat.execute(
            "INSERT INTO pg_class VALUES (?, ?, ?, 'i', 10, 403, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'p', 'd', 0, ?, 0, NULL, NULL)",
            (index.oid, index.name, _MAIN_NAMESPACE, len(index.keys)),
        )
        cat.execute(
            "INSERT INTO pg_index VALUES (?, ?, ?, ?, 0, 1, 0, ?, 0)",
            (index.oid, oids[index.table], index.primary, index.unique, " ".join(map(str, index.keys))),
        )
        cat.execute("UPDATE pg_class SET relhasindex = 1 WHERE oid = ?", (oids[index.table],))
        if index.constraint:
            # The constraint behind the index, as PostgreSQL lists it (SQLAlchemy reflects keys from it).
            constraints.append((
                index.oid + len(oids), index.name, oids[index.table], index.constraint, 0, 0, index.oid, 0,
                "a", "a", "s", _array(index.keys), None,
            ))  # fmt: skip
            text = f"{'PRIMARY KEY' if index.constraint == 'p' else 'UNIQUE'} ({_idents(index.key_names)})"
            definitions[index.oid + len(oids)] = (text, text)
        # PostgreSQL's form; psql prints what follows " USING ".
        listed = ", ".join(_ident(k) if k else "<expression>" for k in index.key_names)
        index_sql[index.oid] = (
            f"CREATE {'UNIQUE ' if index.unique else ''}INDEX {index.name} ON main.{index.table} USING btree ({listed})"
        )
    for table, added in _DEFAULT_COLUMNS.items():
        for column in added.split(", "):
            cat.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    next_oid = _OID_BASE + 4 * len(oids)  # past the objects', their indexes' and the keys' constraints
    for kind, name, _tbl, sql in objects:
        if kind != "table":
            continue
        made = _foreign_keys(name, sql, foreign_keys.get(name, ()), columns, names) + _checks(name, sql, columns, names)
        for constraint in made:
            constraints.append((
                next_oid, constraint.name, oids[name], constraint.kind, constraint.deferrable, constraint.deferred, 0,
                oids.get(constraint.parent, 0), *constraint.actions, _array(constraint.keys),
                None if constraint.parent_keys is None else _array(constraint.parent_keys),
            ))  # fmt: skip
            definitions[next_oid] = constraint.definition
            next_oid += 1
        checks = sum(c.kind == "c" for c in made)
        if checks:
            cat.execute("UPDATE pg_class SET relchecks = ? WHERE oid = ?", (checks, oids[name]))
        # A foreign key's triggers (PostgreSQL's RI triggers, on both tables):
        # psql lists keys and "Referenced by" only for tables that have some.
        for constraint in made:
            if constraint.kind == "f":
                cat.execute(
                    "UPDATE pg_class SET relhastriggers = 1 WHERE oid IN (?, ?)",
                    (oids[name], oids.get(constraint.parent, 0)),
                )
    cat.executemany(
        "INSERT INTO pg_constraint (oid, conname, conrelid, contype, condeferrable, condeferred, conindid, confrelid,"
        " conparentid, conislocal, connamespace, convalidated, confupdtype, confdeltype, confmatchtype, conkey, confkey)"
        f" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 1, {_MAIN_NAMESPACE}, 1, ?9, ?10, ?11, ?12, ?13)",
        constraints,
    )
    for oid, keys in cat.execute("SELECT indexrelid, indkey FROM pg_index").fetchall():
        zeros = " ".join("0" for _ in keys.split())  # int2vector/oidvector, one per key column
        cat.execute(
            "UPDATE pg_index SET indnatts = ?3, indnkeyatts = ?3, indoption = ?1, indclass = ?1, indcollation = ?1"
            " WHERE indexrelid = ?2",
            (zeros, oid, len(keys.split())),
        )
    owners = {oid: name for name, oid in role_oids.items()}
    cat.create_function("pg_get_userbyid", 1, lambda oid: owners.get(_oid(oid), user), deterministic=True)
    cat.create_function(
        "pg_get_constraintdef", -1, lambda oid, pretty=0, *_: definitions.get(_oid(oid), (None, None))[not pretty]
    )
    relnames = dict(cat.execute("SELECT oid, relname FROM pg_class").fetchall())
    cat.create_function(
        "pg_regclass", 1, lambda oid: _ident(relnames[_oid(oid)]) if _oid(oid) in relnames else oid, deterministic=True
    )
    cat.create_function("pg_get_indexdef", -1, lambda oid, *_: index_sql.get(_oid(oid)), deterministic=True)
    view_sql = {oids[name]: _view_query(sql) for kind, name, _tbl, sql in objects if kind == "view"}
    cat.create_function("pg_get_viewdef", -1, lambda oid, *_: view_sql.get(_oid(oid)), deterministic=True)
    cat.create_function("version", 0, lambda: version)
    cat.create_function("current_database", 0, lambda: database)
    for name, (nargs, fn) in _CATALOG_FUNCTIONS.items():
        if fn is not None:
            cat.create_function(name, nargs, fn)
    for nargs in (1, 2, 3):
        cat.create_aggregate("array_agg", nargs, _ArrayAgg)
    _information_schema(cat, database, user)
    return cat


def describe(
    session: Session, source: str, oids: tuple[int, ...], *, user: str, database: str, version: str, roles=()
) -> tuple[tuple[int, ...], list[tuple[str, str]] | None]:
    """A catalog statement not run yet: its parameter OIDs (0s inferred) and its columns' (name, declared type).

    The columns are None when no view can hold the statement (the client
    must describe the portal instead).
    """
    cat = _build(*_schema_of(session), user=user, database=database, version=version, roles=roles)
    cat.create_function("current_setting", -1, lambda *_: None)
    try:
        rewritten = rewrite(source)
        return infer_params(cat, rewritten, oids), view_columns(cat, null_params(rewritten))
    finally:
        cat.close()


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
    roles=(),
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
    cat = _build(*_schema_of(session), user=user, database=database, version=version, roles=roles)
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
        decls, rows = _arrays(decls, names, rows)
        return names, decls, rows
    finally:
        cat.close()

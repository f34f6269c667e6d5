"""SQL text as the PostgreSQL front sees it: split, placeholders, and what each statement is.

SQL itself is SQLite's dialect; this module only reads enough of it to

- split a simple Query into statements at semicolons outside strings,
  quoted names and comments (:func:`split`);
- turn PostgreSQL's ``$1, $2`` placeholders into SQLite's numbered ``?1,
  ?2`` (:func:`split` does it while splitting, and counts them);
- say what a statement is (:func:`classify`): one of the commands the front
  answers itself (``SET``, ``SHOW``, ``BEGIN``..., ``SELECT version()``), or
  plain SQL for SQLite, and which CommandComplete tag it earns
  (:func:`command_tag`).

Pure functions; no SQLite, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CATALOG_TABLES", "INFORMATION_SCHEMA_TABLES", "Command", "param_casts", "Statement", "classify", "command_tag", "split"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: its SQLite text (``?N`` placeholders), first keywords, and parameter count."""

    sql: str
    words: tuple[str, ...]
    n_params: int


@dataclass(frozen=True, slots=True)
class Command:
    """What to do with a statement.

    ``kind`` is ``sql`` (run by SQLite), ``catalog`` (a ``pg_catalog``
    query, answered by :mod:`trionet.sql.pg.catalog`), ``begin``, ``commit``,
    ``rollback``, ``set``, ``reset``, ``show``, ``function`` (a
    ``SELECT f()`` the front answers: ``name`` is f), ``noop`` (accepted,
    nothing to do: ``tag`` says what to answer) or ``unsupported``
    (``message`` says why).
    """

    kind: str
    name: str = ""
    value: str | None = None
    tag: str = ""
    message: str = ""


# One token of SQL text: a quoted string or name (to its end, or to the end
# of the text), a comment, a $N placeholder, a semicolon, or a run of
# anything else. Runs are long, so splitting hostile SQL costs a few Python
# steps per token, not per character.
_TOKEN = re.compile(
    r"'[^']*(?:''[^']*)*'?"
    r'|"[^"]*(?:""[^"]*)*"?'
    r"|`[^`]*(?:``[^`]*)*`?"
    r"|\[[^\]]*\]?"
    r"|--[^\n]*"
    r"|/\*.*?(?:\*/|\Z)"
    r"|;[\s;]*+"
    r"|(?:[^'\"`\[;/-]++|-(?!-)|/(?!\*))++",
    re.DOTALL,
)
_RUN_WORDS = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|[^\s()]")
_PARAM = re.compile(r"\$([0-9]+)")
_PARAM_CAST = re.compile(
    r"\$([0-9]+)\s*::\s*((?:double\s+precision|character\s+varying|[A-Za-z_][\w]*)(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?)",
    re.IGNORECASE,
)
_MAX_PARAM = 65535  # PostgreSQL's limit; a larger $N is left for SQLite to reject
_MAX_WORDS = 4


_CAST_TARGETS = {
    **dict.fromkeys("int int2 int4 int8 integer smallint bigint".split(), "INTEGER"),
    **dict.fromkeys("float4 float8 real float double".split(), "REAL"),
    **dict.fromkeys("numeric decimal".split(), "NUMERIC"),
    **dict.fromkeys("text varchar char bpchar name character date timestamp time".split(), "TEXT"),
    "bytea": "BLOB",
}


def _cast_param(match: re.Match) -> str:
    # A PostgreSQL type name as SQLite's CAST target; bool and the unknown
    # keep the value as Bind decoded it.
    target = _CAST_TARGETS.get(match[2].split("(")[0].split()[0].lower())
    return f"CAST(${match[1]} AS {target})" if target else f"${match[1]}"


def param_casts(sql: str) -> dict[int, str]:
    """The types ``$N::type`` gives its parameters (N -> PostgreSQL type name, lower case)."""
    if "::" not in sql:
        return {}
    return {int(m[1]): " ".join(m[2].split("(")[0].lower().split()) for m in _PARAM_CAST.finditer(sql)}


def split(sql: str, placeholder: str = "?{}", limit: int = 0) -> list[Statement]:
    """Split ``sql`` into statements (empty ones dropped), translating ``$N`` to ``?N``.

    Args:
        sql: one or more statements.
        placeholder: what ``$N`` becomes (``{}`` is N): ``NULL`` to
            describe a statement without its parameters.
        limit: when not 0, stop after ``limit + 1`` statements (the caller
            refuses the text; the rest is not worth reading).

    Never raises: an unterminated string or comment runs to the end of the
    text, where SQLite reports it.
    """
    statements: list[Statement] = []
    out: list[str] = []
    words: list[str] = []
    n_params = 0
    has_content = False
    for match in _TOKEN.finditer(sql):
        token = match.group()
        first = token[0]
        if first == ";":
            if has_content:
                statements.append(Statement("".join(out).strip(), tuple(words), n_params))
                if limit and len(statements) > limit:
                    return statements
            out, words, n_params, has_content = [], [], 0, False
            continue
        if token.startswith(("--", "/*")):
            out.append(token)  # a comment: neither content nor keyword
            continue
        has_content = has_content or not token.isspace()
        # [...] is SQLite's quoted name but PostgreSQL's array subscript or
        # ARRAY[$1, $2]: placeholders in it count.
        if "$" in token and first not in "'\"`":
            # Placeholders, translated at C speed however many there are.
            numbers = [int(n) for n in _PARAM.findall(token) if len(n) < 6]
            n_params = max(n_params, max((n for n in numbers if n <= _MAX_PARAM), default=0))
            # $1::INTEGER (SQLAlchemy's LIMIT, asyncpg users) declares $1's
            # type (the executor reads it at Parse) and becomes SQLite's CAST.
            token = _PARAM_CAST.sub(_cast_param, token)
            if placeholder == "?{}":
                token = _PARAM.sub(r"?\1", token)  # $0 and $99999 become ?0 and ?99999: SQLite rejects them
            else:
                token = _PARAM.sub(lambda m: placeholder.format(m[1]), token)
        out.append(token)
        if len(words) < _MAX_WORDS:
            if first in "'\"`[":
                words.append("")  # a literal or quoted name: ends the run of keywords
                continue
            for word in _RUN_WORDS.finditer(token):
                words.append(word.group().upper())
                if len(words) == _MAX_WORDS:
                    break
    if has_content:
        statements.append(Statement("".join(out).strip(), tuple(words), n_params))
    return statements


_FUNCTIONS = re.compile(
    r"\A\s*SELECT\s+(?:pg_catalog\s*\.\s*)?(version|current_schema|current_database|current_user|session_user"
    r"|current_catalog|pg_backend_pid)\s*(?:\(\s*\))?\s*\Z",
    re.IGNORECASE,
)
_SET = re.compile(
    r"\A\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(?P<name>[A-Za-z_][\w.]*)\s*(?:=|\s+TO\s+)\s*(?P<value>.*?)\s*\Z",
    re.IGNORECASE | re.DOTALL,
)
_SET_TIME_ZONE = re.compile(r"\A\s*SET\s+(?:SESSION\s+|LOCAL\s+)?TIME\s+ZONE\s+(?P<value>.*?)\s*\Z", re.IGNORECASE | re.DOTALL)
_ONE_NAME = re.compile(r"\A\s*(?:RESET|SHOW)\s+(?P<name>[A-Za-z_][\w.]*|ALL)\s*\Z", re.IGNORECASE)
_CATALOG = re.compile(r"\b(pg_catalog|information_schema)\s*\.\s*(\w+)", re.IGNORECASE)
CATALOG_TABLES = frozenset(
    """pg_am pg_attrdef pg_attribute pg_class pg_collation pg_constraint pg_database pg_description
    pg_enum pg_foreign_table pg_index pg_inherits pg_namespace pg_partitioned_table pg_policy pg_proc
    pg_publication pg_publication_namespace pg_publication_rel pg_range pg_rewrite pg_roles pg_sequence
    pg_settings pg_statistic_ext pg_tablespace pg_trigger pg_type pg_views pg_tables pg_matviews
    pg_user pg_authid pg_extension pg_auth_members pg_language""".split()
)  # what trionet/sql/pg/catalog.py emulates
INFORMATION_SCHEMA_TABLES = frozenset({"schemata", "tables", "columns", "views"})  # catalog.py fills them
# Catalog tables named without their schema (psycopg's and asyncpg's type
# look-ups say FROM pg_type): PostgreSQL finds them on its search path.
_BARE_CATALOG = re.compile(r"\b(?:FROM|JOIN)\s+(pg_[a-z_]+)\b", re.IGNORECASE)
_CATALOG_FUNCTIONS = re.compile(
    r"\b(version|current_database|current_schema|current_setting)\s*\(", re.IGNORECASE
)
_LITERAL = re.compile(r"'[^']*(?:''[^']*)*'")
_FROM = re.compile(r"\bFROM\b", re.IGNORECASE)
_SHOW_TZ = re.compile(r"\A\s*SHOW\s+TIME\s+ZONE\s*\Z", re.IGNORECASE)
_SHOW_ISOLATION = re.compile(r"\A\s*SHOW\s+TRANSACTION\s+ISOLATION\s+LEVEL\s*\Z", re.IGNORECASE)


def _set_value(raw: str) -> str:
    parts = []
    for part in re.split(r",(?=(?:[^']*'[^']*')*[^']*\Z)", raw):
        part = part.strip()
        if len(part) >= 2 and part[0] == part[-1] == "'":
            part = part[1:-1].replace("''", "'")
        elif len(part) >= 2 and part[0] == part[-1] == '"':
            part = part[1:-1]
        parts.append(part)
    return ", ".join(parts)


def classify(statement: Statement) -> Command:
    """Say what to do with ``statement`` (see :class:`Command`)."""
    words = statement.words
    first = words[0] if words else ""
    second = words[1] if len(words) > 1 else ""
    sql = statement.sql
    if first in ("BEGIN", "START") and (first == "BEGIN" or second == "TRANSACTION"):
        # SQLite's own modes are kept (BEGIN IMMEDIATE takes the write lock
        # now); PostgreSQL's options (ISOLATION LEVEL, READ WRITE...) are not SQLite's.
        mode = second if first == "BEGIN" and second in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE") else None
        return Command("begin", value=mode)
    if first in ("COMMIT", "END"):
        return Command("commit")
    if first in ("ROLLBACK", "ABORT") and "TO" not in words[1:3]:
        return Command("rollback")
    if first == "SET":
        if second == "TRANSACTION" or (second == "SESSION" and len(words) > 2 and words[2] == "CHARACTERISTICS"):
            return Command("noop", tag="SET")  # isolation levels: SQLite transactions are serializable
        if match := _SET_TIME_ZONE.match(sql):
            return Command("set", "timezone", _set_value(match["value"]))
        if match := _SET.match(sql):
            return Command("set", match["name"].lower(), _set_value(match["value"]))
        return Command("unsupported", message="syntax error in SET (SET name TO value)", tag="42601")
    if first in ("RESET", "SHOW"):
        if first == "SHOW" and _SHOW_TZ.match(sql):
            return Command("show", "timezone")
        if first == "SHOW" and _SHOW_ISOLATION.match(sql):
            return Command("show", "transaction_isolation")
        if match := _ONE_NAME.match(sql):
            return Command(first.lower(), match["name"].lower())
        return Command("unsupported", message=f"syntax error in {first} (expected one name)", tag="42601")
    if first == "SELECT" and (match := _FUNCTIONS.match(sql)):
        return Command("function", match[1].lower())
    bare = _LITERAL.sub("''", sql)  # what is not inside a string literal
    if first == "SELECT" and _CATALOG_FUNCTIONS.search(bare) and not _FROM.search(bare):
        # SELECT version(), current_setting('server_version_num'): the catalog
        # database has these functions (and no data to read).
        return Command("catalog")
    if match := _CATALOG.search(bare):
        if match[1].lower() == "pg_catalog" or match[2].lower() in INFORMATION_SCHEMA_TABLES:
            return Command("catalog")
        return Command(
            "unsupported",
            message=f"{match[1]}.{match[2]} is not emulated by trionet's PostgreSQL front; "
            f"information_schema has {', '.join(sorted(INFORMATION_SCHEMA_TABLES))}",
            tag="0A000",
        )
    # (the substring test first: the regex costs microseconds on every statement)
    if ("pg_" in bare or "PG_" in bare) and (m := _BARE_CATALOG.search(bare)) and m[1].lower() in CATALOG_TABLES:
        return Command("catalog")
    if first == "DISCARD":
        return Command("noop", tag=f"DISCARD {second}".strip())
    if first == "DEALLOCATE":
        return Command("noop", tag="DEALLOCATE ALL" if "ALL" in words else "DEALLOCATE")
    if first == "TRUNCATE":
        return Command("unsupported", message="TRUNCATE is PostgreSQL's, not SQLite's: use DELETE FROM the table", tag="0A000")
    if first == "VACUUM" and second and second not in ("MAIN", "TEMP", "INTO"):
        # pgbench's start (without -n) vacuums its tables one by one.
        return Command(
            "unsupported",
            message="VACUUM of one table is PostgreSQL's; SQLite's VACUUM (no name) rebuilds the whole database",
            tag="0A000",
        )
    if first == "COPY":
        return Command("unsupported", message="COPY is not supported by trionet's PostgreSQL front", tag="0A000")
    if first in ("LISTEN", "UNLISTEN", "NOTIFY", "PREPARE", "EXECUTE", "DECLARE", "FETCH", "MOVE", "LOCK"):
        return Command("unsupported", message=f"{first} is not supported by trionet's PostgreSQL front", tag="0A000")
    return Command("sql")


_CREATE_QUALIFIERS = frozenset({"TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL", "OR"})


def command_tag(words: tuple[str, ...], *, rows: int, changes: int, returns_rows: bool) -> str:
    """The CommandComplete tag of an SQL statement SQLite ran.

    Args:
        words: the statement's first keywords (:attr:`Statement.words`).
        rows: rows sent to the client.
        changes: rows SQLite changed.
        returns_rows: the statement had result columns.
    """
    first = words[0] if words else ""
    if first in ("INSERT", "REPLACE"):
        return f"INSERT 0 {max(changes, rows)}"
    if first in ("UPDATE", "DELETE"):
        return f"{first} {max(changes, rows)}"
    if first in ("CREATE", "DROP", "ALTER"):
        rest = [w for w in words[1:] if w not in _CREATE_QUALIFIERS and w != "REPLACE"]
        return f"{first} {rest[0]}" if rest and rest[0].isalpha() else first
    if first in ("SAVEPOINT", "RELEASE", "ANALYZE", "VACUUM", "REINDEX", "PRAGMA") and not returns_rows:
        return first
    if first == "ROLLBACK":
        return "ROLLBACK"
    if returns_rows or first in ("SELECT", "VALUES", "WITH"):
        return f"SELECT {rows}"
    return first or "SELECT 0"

"""Tests for the earthquake catalogue: the shipped copy, ComCat CSV import, the USGS download."""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import http.server
import io
import lzma
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trionet.sql import catalog
from trionet.sql.catalog import COLUMNS, BadRow, ImportReport, download, shipped

NAMES = [name for name, _ in COLUMNS]
HEADER = ",".join(NAMES)
# sha256 of the USGS export as published (shared/data/README.md of the project's steering repo).
USGS_CSV_SHA256 = "28d8db259c6f1f90db4ea5639074a7b3db64f8d81f1b7a16971c449ec397ca5d"


def rows_of(db: Path, sql: str = "SELECT * FROM quakes ORDER BY id", params=()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def one(db: Path, sql: str, params=()):
    return rows_of(db, sql, params)[0][0]


def quake(**changes: str) -> dict[str, str]:
    """A valid ComCat record as a dict of CSV fields."""
    record = {
        "time": "2011-11-06T03:53:10.130Z", "latitude": "35.5373", "longitude": "-96.7647", "depth": "5.2",
        "mag": "5.7", "magType": "mww", "nst": "", "gap": "", "dmin": "", "rms": "0.61", "net": "us",
        "id": "usp000jb4u", "updated": "2015-05-19T21:12:30.000Z", "place": "5km NNW of Prague, Oklahoma",
        "type": "earthquake", "horizontalError": "", "depthError": "", "magError": "", "magNst": "",
        "status": "reviewed", "locationSource": "us", "magSource": "us",
    }
    record.update(changes)
    return record


def write_csv(path: Path, records: list[dict[str, str]], names: list[str] = NAMES) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[record.get(name, "") for name in names] for record in records])
    return path


# --- the shipped data set -------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_xz() -> Path:
    """The xz-compressed USGS CSV inside the package."""
    with catalog.shipped_csv() as path:
        assert path.is_file() and path.name.endswith(".csv.xz")
        yield path


@pytest.fixture(scope="module")
def plain_csv(shipped_xz, tmp_path_factory) -> Path:
    """The shipped CSV decompressed, for tests that need a plain file."""
    path = tmp_path_factory.mktemp("plain") / "usgs-quakes-lower-us.csv"
    with lzma.open(shipped_xz) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


@pytest.fixture(scope="module")
def imported(shipped_xz, tmp_path_factory):
    """The shipped CSV imported once, straight from its .xz: (database, report, progress calls, seconds)."""
    db = tmp_path_factory.mktemp("imported") / "quakes.sqlite"
    calls: list[tuple[int, int]] = []
    started = time.perf_counter()
    report = catalog.import_usgs([shipped_xz], db, progress=lambda done, total: calls.append((done, total)))
    return db, report, calls, time.perf_counter() - started


def test_the_shipped_copy_is_the_usgs_export_byte_for_byte(plain_csv):
    assert hashlib.sha256(plain_csv.read_bytes()).hexdigest() == USGS_CSV_SHA256
    assert plain_csv.stat().st_size == 2_969_207


def test_plain_and_compressed_files_import_the_same_rows(imported, plain_csv, tmp_path):
    report = catalog.import_usgs([plain_csv], tmp_path / "plain.sqlite")
    assert report.rows_imported == catalog.SHIPPED_ROWS
    assert rows_of(tmp_path / "plain.sqlite") == rows_of(imported[0])


def test_a_damaged_xz_file_is_an_error_naming_it(shipped_xz, tmp_path):
    cut = tmp_path / "cut.csv.xz"
    cut.write_bytes(shipped_xz.read_bytes()[:100_000])
    db = tmp_path / "q.sqlite"
    with pytest.raises(ValueError, match=r"cut\.csv\.xz: not a whole xz file"):
        catalog.import_usgs([cut], db)
    assert one(db, "SELECT count(*) FROM quakes") == 0  # its transaction was rolled back
    junk = tmp_path / "junk.csv.xz"
    junk.write_bytes(b"time,id\n")
    with pytest.raises(ValueError, match=r"junk\.csv\.xz: not an xz file"):
        catalog.import_usgs([junk], db)


def test_shared_csv_imports_every_row(imported):
    db, report, _, _ = imported
    assert report.rows_read == 16_941
    assert report.rows_imported == 16_941
    assert report.bad_rows == []
    assert one(db, "SELECT count(*) FROM quakes") == 16_941
    assert one(db, "SELECT count(*) FROM quakes WHERE nst IS NULL") == 4_066
    assert one(db, "SELECT count(*) FROM quakes WHERE magError IS NULL") == 8_986


def test_shared_csv_types_and_nulls(imported):
    db = imported[0]
    empty_strings = " + ".join(f"({name} = '')" for name in NAMES)
    assert one(db, f"SELECT sum({empty_strings}) FROM quakes") == 0
    assert rows_of(db, "SELECT typeof(mag), count(*) FROM quakes GROUP BY 1") == [("real", 16_941)]
    assert rows_of(db, "SELECT typeof(nst), count(*) FROM quakes GROUP BY 1 ORDER BY 1") == [
        ("integer", 16_941 - 4_066),
        ("null", 4_066),
    ]
    for name, kind in COLUMNS:
        kinds = {k for (k,) in rows_of(db, f"SELECT DISTINCT typeof({name}) FROM quakes")}
        assert kinds <= {kind.lower(), "null"}, name
    # The values themselves, spot-checked against the file's fourth data line.
    assert rows_of(db, "SELECT time, latitude, depth, nst, place, magNst FROM quakes WHERE id = 'ci3198810'") == [
        ("1995-01-01T14:59:36.630Z", 36.3311667, 3.739, 7, "57km NE of Boulder City, Nevada", 0)
    ]
    assert one(db, "SELECT min(mag) || '..' || max(mag) FROM quakes") == "3.0..7.2"


def test_schema(imported):
    db = imported[0]
    info = rows_of(db, "SELECT name, type, pk FROM pragma_table_info('quakes') ORDER BY cid")
    assert info == [(name, kind, int(name == "id")) for name, kind in COLUMNS]
    indexed = rows_of(
        db,
        "SELECT ii.name FROM pragma_index_list('quakes') AS il, pragma_index_info(il.name) AS ii "
        "WHERE il.origin = 'c' ORDER BY 1",
    )
    assert indexed == [("mag",), ("time",)]


def test_import_progress(imported, shipped_xz):
    _, _, calls, _ = imported
    size = shipped_xz.stat().st_size  # bytes read from disk: the compressed file
    assert calls[0] == (0, size)
    assert calls[-1] == (size, size)
    assert len(calls) > 3  # there is something for a progress bar to show
    assert all(total == size for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_reimport_is_idempotent(imported, plain_csv, tmp_path):
    db = tmp_path / "again.sqlite"
    shutil.copyfile(imported[0], db)
    report = catalog.import_usgs(plain_csv, db)  # a single path works too
    assert report.rows_imported == 16_941
    assert rows_of(db) == rows_of(imported[0])


# --- upsert ---------------------------------------------------------------------


def test_later_updated_wins_whatever_the_import_order(tmp_path):
    old = write_csv(tmp_path / "old.csv", [quake(mag="5.6", updated="2014-11-07T01:46:49.350Z")])
    new = write_csv(tmp_path / "new.csv", [quake(mag="5.7", updated="2015-05-19T21:12:30.000Z")])
    for order in ([old, new], [new, old]):
        db = tmp_path / f"{order[0].stem}-first.sqlite"
        for path in order:
            assert catalog.import_usgs([path], db).rows_imported == 1
        assert rows_of(db, "SELECT mag, updated FROM quakes") == [(5.7, "2015-05-19T21:12:30.000Z")]


def test_last_import_wins_on_equal_updated(tmp_path):
    db = tmp_path / "q.sqlite"
    catalog.import_usgs([write_csv(tmp_path / "a.csv", [quake(place="first")])], db)
    catalog.import_usgs([write_csv(tmp_path / "b.csv", [quake(place="second")])], db)
    assert rows_of(db, "SELECT place FROM quakes") == [("second",)]


# --- bad rows -------------------------------------------------------------------


def line(**changes: str) -> str:
    """One CSV line (without its line end) holding ``quake(**changes)``, quoted as ComCat does."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(quake(**changes).values())
    return out.getvalue()


def test_bad_rows_are_reported_by_the_line_they_start_on(tmp_path):
    text = "\n".join([
        HEADER,                                                  # 1
        line(id="ok1"),                                          # 2
        line(id="ok2", place="5km NNW of Prague,\nOklahoma"),    # 3-4: a comma and a newline, quoted
        line(id="badmag", mag="abc"),                            # 5
        "2011-11-06T03:53:10.130Z,35.5,-96.7,5.2,5.7",           # 6
        line(id=""),                                             # 7
        "",                                                      # 8: blank, not a record
        line(id="ok3", place='"Quoted" Town, Nevada'),           # 9
        line(id="badtime", time="yesterday"),                    # 10
        line(id="badnst", nst="3.5"),                            # 11
        '"a quoted field,\nwith a newline",' + ",".join(["x"] * 5),  # 12-13
        line(id="ok4", place="Utah"),                            # 14
        line(id="notime", time=""),                              # 15
        line(id="badupdated", updated="2015-13-01T00:00:00Z"),   # 16
    ]) + "\n"
    path = tmp_path / "mixed.csv"
    path.write_text(text, newline="")
    db = tmp_path / "q.sqlite"

    report = catalog.import_usgs([path], db)

    assert [(bad.line, bad.reason) for bad in report.bad_rows] == [
        (5, "mag: not a number: 'abc'"),
        (6, "expected 22 fields, got 5"),
        (7, "missing id"),
        (10, "time: not an ISO-8601 time: 'yesterday'"),
        (11, "nst: not an integer: '3.5'"),
        (12, "expected 22 fields, got 6"),
        (15, "missing time"),
        (16, "updated: not an ISO-8601 time: '2015-13-01T00:00:00Z'"),
    ]
    assert all(bad.path == str(path) for bad in report.bad_rows)
    assert str(report.bad_rows[0]) == f"{path}:5: mag: not a number: 'abc'"
    assert (report.rows_read, report.rows_imported) == (12, 4)
    assert rows_of(db, "SELECT id, place FROM quakes ORDER BY id") == [
        ("ok1", "5km NNW of Prague, Oklahoma"),
        ("ok2", "5km NNW of Prague,\nOklahoma"),
        ("ok3", '"Quoted" Town, Nevada'),
        ("ok4", "Utah"),
    ]


def test_malformed_quoting_and_crlf_line_ends(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes("\r\n".join([
        HEADER,
        line(id="a"),
        line(id="b").replace(",reviewed,us,us", ',reviewed,us,"u"s'),
        line(id="c", place="2km S of X,\r\nY"),
        line(id="d").replace("earthquake", '"unterminated'),
    ]).encode() + b"\r\n")
    report = catalog.import_usgs([path], tmp_path / "q.sqlite")
    assert [(bad.line, bad.reason.split(":")[0]) for bad in report.bad_rows] == [
        (3, "malformed CSV"),
        (6, "malformed CSV"),
    ]
    assert report.rows_imported == 2
    assert one(tmp_path / "q.sqlite", "SELECT place FROM quakes WHERE id = 'c'") == "2km S of X,\r\nY"


def test_out_of_range_numbers_are_bad_rows(tmp_path):
    path = write_csv(tmp_path / "big.csv", [
        quake(id="a", nst=str(2**63)),
        quake(id="b", depth="1e999"),
        quake(id="c", mag="nan"),
        quake(id="d", nst=str(2**63 - 1), depth="-1e300"),
    ])
    report = catalog.import_usgs([path], tmp_path / "q.sqlite")
    assert [bad.reason.split(":")[0] for bad in report.bad_rows] == ["nst", "depth", "mag"]
    assert rows_of(tmp_path / "q.sqlite", "SELECT id, nst, depth FROM quakes") == [("d", 2**63 - 1, -1e300)]


# --- headers --------------------------------------------------------------------


def test_columns_are_found_by_name(plain_csv, tmp_path):
    with open(plain_csv, newline="") as f:
        records = [dict(zip(NAMES, row)) for row in list(csv.reader(f))[1:401]]
    straight = write_csv(tmp_path / "straight.csv", records)
    shuffled_names = ["extra", *reversed(NAMES)]
    shuffled = write_csv(tmp_path / "shuffled.csv", [{**r, "extra": "?"} for r in records], shuffled_names)
    catalog.import_usgs([straight], tmp_path / "straight.sqlite")
    report = catalog.import_usgs([shuffled], tmp_path / "shuffled.sqlite")
    assert report.rows_imported == 400
    assert rows_of(tmp_path / "shuffled.sqlite") == rows_of(tmp_path / "straight.sqlite")
    assert len(rows_of(tmp_path / "straight.sqlite")) == 400


def test_a_missing_optional_column_loads_as_null(tmp_path):
    names = [n for n in NAMES if n != "magSource"]
    path = write_csv(tmp_path / "short.csv", [quake()], names)
    catalog.import_usgs([path], tmp_path / "q.sqlite")
    assert rows_of(tmp_path / "q.sqlite", "SELECT mag, magSource FROM quakes") == [(5.7, None)]


def test_a_missing_required_column_is_an_error_and_writes_nothing(tmp_path):
    good = write_csv(tmp_path / "good.csv", [quake()])
    bad = write_csv(tmp_path / "nomag.csv", [quake()], [n for n in NAMES if n != "mag"])
    db = tmp_path / "q.sqlite"
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*\bmag\b"):
        catalog.import_usgs([good, bad], db)
    assert not db.exists()  # the good file before it was not imported either


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"\n\n", "empty file"), (b"time,mag\n", "no latitude"), (b"\xff\xfe\n", "UTF-8")],
)
def test_not_a_comcat_file(tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        catalog.import_usgs([path], tmp_path / "q.sqlite")


def test_byte_order_mark_is_ignored(tmp_path):
    path = write_csv(tmp_path / "bom.csv", [quake()])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert catalog.import_usgs([path], tmp_path / "q.sqlite").rows_imported == 1


# --- hypothesis: no record is ever lost -----------------------------------------

_tricky_text = st.text(alphabet=st.sampled_from(list(',"\r\n \x00x0.-:TZé5')), max_size=8)
_good_record = st.builds(
    lambda id_, mag, nst: list(quake(id=id_, mag=mag, nst=nst).values()),
    st.text(alphabet="abc123", min_size=1, max_size=4),
    st.sampled_from(["3", "3.5", "-0.1", ".5", "7e0"]),
    st.sampled_from(["", "0", "12", "-3"]),
)
_random_record = st.lists(_tricky_text, min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(st.booleans(), _good_record, _random_record), max_size=12),
    line_end=st.sampled_from(["\n", "\r\n"]),
)
def test_every_record_is_imported_or_reported(records, line_end):
    # csv.writer leaves a lone "\r" unquoted when the line end is "\n", so quote by hand.
    def encode(fields: list[str]) -> str:
        quoted = ('"' + f.replace('"', '""') + '"' if re.search('[,"\r\n]', f) or not f else f for f in fields)
        return ",".join(quoted) + line_end

    text = encode(NAMES)
    starts = []  # (start line, fields, built to be good)
    for is_good, good, random_fields in records:
        fields = good if is_good else random_fields
        starts.append((len(re.findall(r"\r\n|\r|\n", text)) + 1, fields, is_good))
        text += encode(fields)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.csv"
        path.write_text(text, encoding="utf-8", newline="")
        db = Path(tmp) / "q.sqlite"
        report = catalog.import_usgs([path], db)
        stored = one(db, "SELECT count(*) FROM quakes")

    assert report.rows_read == len(records)
    assert report.rows_imported + len(report.bad_rows) == report.rows_read
    bad_lines = [bad.line for bad in report.bad_rows]
    assert len(set(bad_lines)) == len(bad_lines)
    start_lines = {line for line, _, _ in starts}
    assert set(bad_lines) <= start_lines
    for line, fields, is_good in starts:
        if is_good:
            assert line not in bad_lines
        elif len(fields) != len(NAMES):
            assert line in bad_lines
    good_ids = {fields[NAMES.index("id")] for line, fields, _ in starts if line not in bad_lines}
    assert stored == len(good_ids)


# --- the catalogue served by default ---------------------------------------------


@pytest.fixture
def builds(monkeypatch):
    """Count catalogue builds (each still imports the real shipped copy)."""
    calls: list[str] = []
    real_build = shipped.build_catalogue

    def counted_build(db_path, **kwargs):
        calls.append(str(db_path))
        return real_build(db_path, **kwargs)

    monkeypatch.setattr(shipped, "build_catalogue", counted_build)
    return calls


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIONET_CATALOG_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_catalogue_path(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIONET_CATALOG_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert catalog.catalogue_path() == tmp_path / "trionet" / "usgs-quakes-v1.sqlite"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for cache in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", cache)
        assert catalog.catalogue_path() == tmp_path / "home" / ".cache" / "trionet" / "usgs-quakes-v1.sqlite"
    monkeypatch.setenv("TRIONET_CATALOG_DB", str(tmp_path / "mine.sqlite"))
    assert catalog.catalogue_path() == tmp_path / "mine.sqlite"


def test_ensure_catalogue_builds_the_real_catalogue_once(cache_home, builds, imported):
    calls = []
    path = catalog.ensure_catalogue(progress=lambda done, total: calls.append(done))
    assert path == cache_home / "trionet" / "usgs-quakes-v1.sqlite"
    assert rows_of(path) == rows_of(imported[0])  # the real events, not invented ones
    assert one(path, "SELECT max(mag) FROM quakes") == 7.2
    assert one(path, "SELECT max(mag) FROM quakes WHERE place LIKE '%Oklahoma'") == 5.7
    assert one(path, "PRAGMA user_version") == catalog.CATALOG_VERSION
    assert calls and calls == sorted(calls)
    inode = path.stat().st_ino
    assert catalog.ensure_catalogue() == path
    assert len(builds) == 1
    assert path.stat().st_ino == inode
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    assert builds[0] != str(path)  # built beside it, then moved into place


def test_ensure_catalogue_follows_the_environment(tmp_path, cache_home, builds, monkeypatch):
    monkeypatch.setenv("TRIONET_CATALOG_DB", str(tmp_path / "env" / "c.sqlite"))
    assert catalog.ensure_catalogue() == tmp_path / "env" / "c.sqlite"
    assert catalog.ensure_catalogue(tmp_path / "arg.sqlite") == tmp_path / "arg.sqlite"
    assert one(tmp_path / "arg.sqlite", "SELECT count(*) FROM quakes") == catalog.SHIPPED_ROWS
    assert len(builds) == 2
    assert not cache_home.exists()


def test_ensure_catalogue_rebuilds_one_built_from_an_older_copy(cache_home, builds):
    path = catalog.ensure_catalogue()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {catalog.CATALOG_VERSION - 1}")
        conn.execute("DELETE FROM quakes WHERE mag < 4")
        conn.commit()
    catalog.ensure_catalogue()
    assert len(builds) == 2
    assert one(path, "PRAGMA user_version") == catalog.CATALOG_VERSION
    assert one(path, "SELECT count(*) FROM quakes") == catalog.SHIPPED_ROWS


def test_ensure_catalogue_rebuilds_a_corrupt_cache(cache_home, builds):
    path = cache_home / "trionet" / "usgs-quakes-v1.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 100)
    assert catalog.ensure_catalogue() == path
    assert len(builds) == 1
    assert one(path, "SELECT count(*) FROM quakes") == catalog.SHIPPED_ROWS


def test_ensure_catalogue_never_overwrites_a_given_database(tmp_path, cache_home, builds):
    mine = tmp_path / "mine.sqlite"
    catalog.import_usgs([write_csv(tmp_path / "q.csv", [quake()])], mine)
    before = mine.read_bytes()
    assert catalog.ensure_catalogue(mine) == mine
    assert mine.read_bytes() == before
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="not an SQLite database"):
        catalog.ensure_catalogue(junk)
    assert builds == []


def test_ensure_catalogue_leaves_nothing_behind_when_the_build_fails(cache_home, monkeypatch):
    def failing_build(db_path, **kwargs):
        Path(db_path).write_bytes(b"half a database")
        raise OSError("disk full")

    monkeypatch.setattr(shipped, "build_catalogue", failing_build)
    with pytest.raises(OSError, match="disk full"):
        catalog.ensure_catalogue()
    assert list((cache_home / "trionet").iterdir()) == []


def test_a_damaged_shipped_copy_is_reported_not_served(tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv.xz"
    with lzma.open(bad, "wb") as f:
        f.write(write_csv(tmp_path / "one.csv", [quake()]).read_bytes())

    @contextlib.contextmanager
    def fake_shipped():
        yield bad

    monkeypatch.setattr(shipped, "shipped_csv", fake_shipped)
    with pytest.raises(ValueError, match="shipped catalogue is damaged: 1 of 16941 rows"):
        catalog.build_catalogue(tmp_path / "c.sqlite")


# --- fetch_usgs against a local stand-in for the USGS service ---------------------


class FakeComCat:
    """Events in memory, served like the FDSN event service: CSV, 204 when empty, 400 over the limit."""

    limit = 20_000

    def __init__(self, events: list[tuple[datetime.datetime, str]]) -> None:
        self.events = events  # (time, id), sorted by time
        self.requests: list[dict[str, str]] = []
        self.answers: list[tuple[int, int]] = []  # (status, events)
        self.fail_first: list[tuple[int, str]] = []  # (status, body) to answer before the real thing

    def answer(self, query: dict[str, str]) -> tuple[int, bytes]:
        self.requests.append(query)
        if self.fail_first:
            status, body = self.fail_first.pop(0)
            return status, body.encode()
        if "starttime" not in query or "endtime" not in query:
            return 400, b"Error 400: Bad Request\n\nstarttime and endtime are required\n"
        start = datetime.datetime.fromisoformat(query["starttime"])
        end = datetime.datetime.fromisoformat(query["endtime"])
        chosen = [(t, i) for t, i in self.events if start <= t <= end]
        if len(chosen) > self.limit:
            self.answers.append((400, len(chosen)))
            return 400, (
                f"Error 400: Bad Request\n\n{len(chosen)} matching events exceeds search limit of "
                f"{self.limit}. Modify the search to match fewer events.\n"
            ).encode()
        self.answers.append((204 if not chosen else 200, len(chosen)))
        if not chosen:
            return 204, b""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(NAMES)
        for t, event_id in chosen:
            record = quake(id=event_id, time=t.isoformat(timespec="milliseconds") + "Z", place="1km N of A, B")
            writer.writerow(record.values())
        return 200, out.getvalue().encode()


@pytest.fixture
def comcat():
    """A FakeComCat on 127.0.0.1, port 0; yields (service, its query URL)."""
    service = FakeComCat([])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            status, body = service.answer(dict(urllib.parse.parse_qsl(url.query)))
            self.send_response(status)
            self.send_header("Content-Type", "text/csv" if status == 200 else "text/plain")
            if status != 204:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}/fdsnws/event/1/query"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_pages_by_time_windows(comcat, tmp_path):
    service, url = comcat
    first = datetime.datetime(2015, 1, 1)
    # 25,000 events, one every 10 minutes: more than one query may return, and
    # with events on round times, some sit exactly on window boundaries.
    service.events = [(first + datetime.timedelta(minutes=10 * i), f"ev{i:05d}") for i in range(25_000)]
    dest = tmp_path / "fetched.csv"
    calls = []

    count = catalog.fetch_usgs(
        dest, start=datetime.date(2015, 1, 1), end=datetime.date(2015, 6, 30), min_magnitude=2.5,
        url=url, progress=lambda done, total: calls.append((done, total)),
    )

    assert count == 25_000
    lines = dest.read_text().splitlines()
    assert lines[0] == HEADER
    assert sum(line.startswith("time,") for line in lines) == 1
    with open(dest, newline="") as f:
        ids = [row[NAMES.index("id")] for row in list(csv.reader(f))[1:]]
    assert ids == [event_id for _, event_id in service.events]  # each once, in time order
    assert (400, 25_000) in service.answers  # it had to page
    assert all(n <= service.limit for status, n in service.answers if status == 200)
    assert all(q["format"] == "csv" and q["orderby"] == "time-asc" for q in service.requests)
    boxes = {(q["minlatitude"], q["maxlatitude"], q["minlongitude"], q["maxlongitude"]) for q in service.requests}
    assert boxes == {("24.6", "50", "-125", "-65")}
    assert {q["minmagnitude"] for q in service.requests} == {"2.5"}
    assert service.requests[0]["starttime"] == "2015-01-01T00:00:00.000"
    assert service.requests[-1]["endtime"] == "2015-06-30T23:59:59.999"
    total = 181 * 86_400
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert not (tmp_path / "fetched.csv.part").exists()

    report = catalog.import_usgs([dest], tmp_path / "q.sqlite")
    assert (report.rows_imported, report.bad_rows) == (25_000, [])


def test_fetch_with_no_events_writes_just_the_header(comcat, tmp_path):
    _, url = comcat
    dest = tmp_path / "empty.csv"
    assert catalog.fetch_usgs(dest, start=datetime.date(2000, 1, 1), end=datetime.date(2000, 1, 2), url=url) == 0
    assert dest.read_text() == HEADER + "\n"


def test_fetch_retries_a_server_error(comcat, tmp_path, monkeypatch):
    service, url = comcat
    monkeypatch.setattr(download, "_RETRY_DELAYS", (0.0, 0.0))
    service.events = [(datetime.datetime(2001, 5, 5, 12), "only")]
    service.fail_first = [(503, "busy"), (500, "oops")]
    dest = tmp_path / "one.csv"
    assert catalog.fetch_usgs(dest, start=datetime.date(2001, 5, 5), end=datetime.date(2001, 5, 5), url=url) == 1
    assert len(service.requests) == 3


def test_fetch_gives_up_after_three_tries(comcat, tmp_path, monkeypatch):
    service, url = comcat
    monkeypatch.setattr(download, "_RETRY_DELAYS", (0.0, 0.0))
    service.fail_first = [(503, "busy")] * 3
    dest = tmp_path / "none.csv"
    with pytest.raises(urllib.error.HTTPError) as info:
        catalog.fetch_usgs(dest, start=datetime.date(2001, 5, 5), end=datetime.date(2001, 5, 5), url=url)
    assert info.value.code == 503
    info.value.close()
    assert len(service.requests) == 3
    assert list(tmp_path.iterdir()) == []


def test_fetch_reports_a_bad_request_with_the_services_message(comcat, tmp_path):
    service, url = comcat
    service.fail_first = [(400, "Error 400: Bad Request\n\nBad minmagnitude value\n")]
    with pytest.raises(urllib.error.HTTPError, match="Bad minmagnitude") as info:
        day = datetime.date(2001, 1, 1)
        catalog.fetch_usgs(tmp_path / "x.csv", start=day, end=day, url=url)
    info.value.close()
    assert len(service.requests) == 1  # not retried, not split
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_an_empty_range(tmp_path):
    with pytest.raises(ValueError, match="before"):
        catalog.fetch_usgs(tmp_path / "x.csv", start=datetime.date(2001, 1, 2), end=datetime.date(2001, 1, 1))
    assert not (tmp_path / "x.csv").exists()


def test_module_exports():
    assert set(catalog.__all__) >= {
        "COLUMNS", "SCHEMA_SQL", "BadRow", "ImportReport", "create_schema", "import_usgs", "build_catalogue",
        "catalogue_path", "ensure_catalogue", "shipped_csv", "fetch_usgs", "USGS_URL",
    }
    assert all(hasattr(catalog, name) for name in catalog.__all__)
    assert len(COLUMNS) == 22
    assert ImportReport(1, 1, []).rows_read == 1
    with pytest.raises(AttributeError):
        BadRow("p", 1, "r").line = 2  # frozen


def test_fetch_usgs_command_then_import(comcat, tmp_path, trionet_cmd):
    service, url = comcat
    first = datetime.datetime(2010, 3, 1)
    service.events = [(first + datetime.timedelta(hours=i), f"cli{i:03d}") for i in range(50)]
    out = tmp_path / "fetched.csv"
    result = trionet_cmd(
        "sql", "fetch-usgs", "--start", "2010-03-01", "--end", "2010-03-05", "--url", url, "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "50 event(s) written" in result.stdout
    loaded = trionet_cmd("sql", "import-usgs", str(out), "--db", str(tmp_path / "f.sqlite"))
    assert loaded.returncode == 0 and "50 row(s) imported" in loaded.stdout

"""The earthquake catalogue behind ``trionet sql``: the shipped copy, ComCat CSV import, USGS download.

Every way to get a ``quakes`` table gives the same schema
(:mod:`~trionet.sql.catalog.schema`, one column per ComCat CSV column):

- :func:`ensure_catalogue` (:mod:`~trionet.sql.catalog.shipped`) builds the
  real catalogue from the copy trionet ships, once, in the user's cache; it is
  what ``trionet sql serve`` serves by default;
- :func:`import_usgs` (:mod:`~trionet.sql.catalog.importer`) loads ComCat CSV
  files (as exported by the USGS event search, plain or xz-compressed) into an
  SQLite database, streaming them and reporting every row it cannot load;
- :func:`fetch_usgs` (:mod:`~trionet.sql.catalog.download`) downloads a fresh
  export from the USGS FDSN event web service, window by window.

Everything here is synchronous and blocking: the CLI calls it directly,
before any server starts.
"""

from trionet.sql.catalog.download import USGS_URL, fetch_usgs
from trionet.sql.catalog.importer import BadRow, ImportReport, import_usgs
from trionet.sql.catalog.schema import (
    COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMA_SQL,
    create_schema,
)
from trionet.sql.catalog.shipped import (
    CATALOG_VERSION,
    SHIPPED_ROWS,
    build_catalogue,
    catalogue_path,
    ensure_catalogue,
    shipped_csv,
)

__all__ = [
    "CATALOG_VERSION",
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "SCHEMA_SQL",
    "SHIPPED_ROWS",
    "USGS_URL",
    "BadRow",
    "ImportReport",
    "build_catalogue",
    "catalogue_path",
    "create_schema",
    "ensure_catalogue",
    "fetch_usgs",
    "import_usgs",
    "shipped_csv",
]

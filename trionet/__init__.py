"""trionet: three network services on trio's structured concurrency.

- :mod:`trionet.sql`: an SQL server over SQLite;
- :mod:`trionet.names`: a name server with a client limit, a backlog and a quota;
- :mod:`trionet.ring`: a token ring with two counter-rotating tokens.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

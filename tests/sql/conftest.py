"""The SQL layer: SQLite and PostgreSQL, on asyncio (SQLAlchemy's asyncio engines) and on trio
(the same store on a synchronous engine driven from threads)."""

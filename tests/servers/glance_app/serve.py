"""Serve the Glance API on 127.0.0.1 with a threaded wsgiref server.

Run by tests/servers/glance.py with the cached Glance venv's Python (not the
project's), as ``serve.py PORT PARENT_PID``. Glance 33 has no standalone
``glance-api`` server any more (the console script only prints that Glance must
run under a WSGI server, ``glance.wsgi.api:application``); uWSGI or mod_wsgi
would need a compiler or Apache, so the harness loads the same application
(``glance.common.wsgi_app.init_app``: config from ``$OS_GLANCE_CONFIG_DIR``,
stores, staging check, paste pipeline) into the standard library's server.
Import tasks run in Glance's native thread pool inside this process. ``kill -USR1``
writes every thread's stack to the server log (to debug a stuck import). Exits by
itself if PARENT_PID goes away, so a killed test run cannot leave the server
behind.
"""

import faulthandler
import os
import signal
import sys
import traceback

# tests/servers/child/ holds only wsgi_child (tests/servers/ itself would shadow the glance package)
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child"))

import wsgi_child  # noqa: E402


def log_lost_exceptions():
    """Print exceptions that end a thread-pool job.

    Glance runs each import task with ``pool.submit()`` and never looks at the
    future: an exception that escapes the task executor (e.g. a database error
    while saving the task's state) would vanish and leave the task "processing"
    forever. This makes it visible in the server log.
    """
    from concurrent.futures import thread

    submit = thread.ThreadPoolExecutor.submit

    def report(future):
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            sys.stderr.write("thread-pool job raised (Glance does not look): %s\n%s" % (error, "".join(
                traceback.format_exception(type(error), error, error.__traceback__))))
            sys.stderr.flush()

    def submit_and_report(self, fn, /, *args, **kwargs):
        future = submit(self, fn, *args, **kwargs)
        future.add_done_callback(report)
        return future

    thread.ThreadPoolExecutor.submit = submit_and_report


def serialize_sqlite_transactions():
    """Make Glance's SQLite transactions wait for each other instead of failing.

    oslo.db opens every SQLite transaction with a plain (deferred) ``BEGIN``. When
    an import task thread and a request thread both read and then write, SQLite
    cannot upgrade both read locks and fails one of them at once with "database is
    locked" (no busy wait applies); in the task thread that error escapes
    unnoticed (see log_lost_exceptions) and the import stays "processing" forever.
    ``BEGIN IMMEDIATE`` takes the write lock up front, so transactions queue on
    SQLite's busy timeout instead. SQLite is a test-only database for Glance; a
    real deployment's MySQL/PostgreSQL does not have this problem.
    """
    import sqlite3

    import sqlalchemy
    from sqlalchemy.engine import Engine

    @sqlalchemy.event.listens_for(Engine, "connect")
    def busy_timeout(dbapi_connection, connection_record):
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA busy_timeout = 60000")

    @sqlalchemy.event.listens_for(Engine, "before_cursor_execute", retval=True)
    def begin_immediate(conn, cursor, statement, parameters, context, executemany):
        if conn.dialect.name == "sqlite" and statement.strip().upper() == "BEGIN":
            statement = "BEGIN IMMEDIATE"
        return statement, parameters


def main():
    port, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack to the log
    log_lost_exceptions()
    serialize_sqlite_transactions()
    wsgi_child.exit_with_parent(parent_pid)
    from glance.common import wsgi_app

    app = wsgi_app.init_app()
    wsgi_child.serve("glance-api", app, port)


if __name__ == "__main__":
    main()

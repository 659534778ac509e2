"""Why a connection to the database failed, in words: for the log, the readiness check
and the client.

An exception's message may quote the URL, and so the password, or data; these names are
built from what the exception *is* instead: PostgreSQL's SQLSTATE (its documentation,
Appendix A, "PostgreSQL Error Codes", gives the condition names used below), the
exception's type, and the operating system's errno. Two pieces of text are vetted and
kept: the reason of a failed TLS certificate check (OpenSSL's fixed wording, or Python's
"Hostname mismatch, certificate is not valid for 'host'"), and OpenSSL's upper-case
reason code of another TLS error. From the URL only the user name, the database name and
the host and port are used, never the password.

Each ``Failure`` has a ``kind``, a fixed phrase that any client may see ("authentication
failed"), and a ``detail`` for the log, with what the operator needs to act on it.
"""

import errno
import os
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

# SQLSTATE classes whose every condition means no connection could be had; within class 57
# only the 57P codes (57014, a cancelled statement, is a 504 of its own).
CONNECTION_EXCEPTION = "08"
INVALID_AUTHORIZATION_SPECIFICATION = "28"
INVALID_CATALOG_NAME = "3D"
INSUFFICIENT_RESOURCES = "53"
OPERATOR_INTERVENTION = "57P"
# Condition names, as in PostgreSQL's Appendix A.
CONDITION_NAMES = {
    "08000": "connection_exception",
    "08001": "sqlclient_unable_to_establish_sqlconnection",
    "08003": "connection_does_not_exist",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
    "08006": "connection_failure",
    "08007": "transaction_resolution_unknown",
    "08P01": "protocol_violation",
    "28000": "invalid_authorization_specification",
    "28P01": "invalid_password",
    "3D000": "invalid_catalog_name",
    "53000": "insufficient_resources",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "53400": "configuration_limit_exceeded",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "57P04": "database_dropped",
    "57P05": "idle_session_timeout",
}
# getaddrinfo's answers for a name that does not exist (EAI_NODATA: glibc, no address).
UNKNOWN_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
# asyncpg raises these as bare ConnectionErrors, with no errno (asyncpg/connect_utils.py):
# the server answered the SSLRequest with "N", or with an error it does not pass on.
TLS_REFUSED = "rejected SSL upgrade"
TLS_ERROR_RESPONSE = "server sent an error response during SSL exchange"
# OpenSSL's reason codes, such as WRONG_VERSION_NUMBER or TLSV1_ALERT_UNKNOWN_CA.
OPENSSL_REASON = re.compile(r"[A-Z0-9_]{1,80}")
# Longest certificate check reason kept; OpenSSL's are well under it.
MAX_REASON = 200


@dataclass(frozen=True)
class Failure:
    """What went wrong. ``kind`` is a fixed phrase, safe to show any client; ``detail``
    is for the log. ``connect``: no connection could be had, or the server is going away,
    so requests fail fast for a moment (admission.py) rather than each try again."""

    kind: str
    detail: str
    connect: bool = True


def name_failure(error: BaseException, url: URL | None = None) -> Failure | None:
    """The named connection failure in ``error``'s chain, or None if it is not one.

    ``url`` (the app's database URL) lends the user, database and server names to the
    detail. The SQLSTATE is looked at first, as the most precise; then the exceptions
    asyncpg, the operating system and the ssl module raise while connecting.
    """
    place = Place(url)
    chain = list(exception_chain(error))
    sqlstate = next((code for cause in chain if (code := sqlstate_of(cause))), "")
    if sqlstate and (failure := by_sqlstate(sqlstate, place)):
        return failure
    for cause in chain:
        if failure := by_exception(cause, place):
            return failure
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        # SQLAlchemy recognised a disconnect (dialect.is_disconnect) the driver did not name.
        return Failure("the connection was lost", "the connection to the server was lost",
                       connect=False)  # fmt: skip
    return None


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it wraps, each once: SQLAlchemy's ``.orig`` (the DBAPI
    adapter's error) and ``__cause__`` (``raise ... from``: the driver's own exception).

    Not ``__context__``: an unrelated error handled earlier, a timeout say, must not name
    a later one.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def sqlstate_of(error: BaseException) -> str:
    """asyncpg's exceptions, and SQLAlchemy's adapters of them, carry ``sqlstate``."""
    code = getattr(error, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else ""


class Place:
    """The names a detail may use, from the app's URL: never its password."""

    def __init__(self, url: URL | None) -> None:
        self.user = f'"{url.username}"' if url is not None and url.username else "(none given)"
        self.database = f'"{url.database}"' if url is not None and url.database else "(none given)"
        if url is not None and url.host:
            self.server = f"{url.host}:{url.port or 5432}"
        else:
            self.server = "the server"


def by_sqlstate(sqlstate: str, place: Place) -> Failure | None:
    code = f"{sqlstate} {CONDITION_NAMES[sqlstate]}" if sqlstate in CONDITION_NAMES else sqlstate
    if sqlstate == "28P01":
        return Failure(
            "authentication failed",
            f"authentication failed for user {place.user}: wrong password, or no such role "
            f"({code})",
        )
    if sqlstate.startswith(INVALID_AUTHORIZATION_SPECIFICATION):
        return Failure(
            "authentication failed",
            f"authentication failed for user {place.user} on database {place.database}: no "
            f"such role, the role may not log in, or no pg_hba.conf line lets it in ({code})",
        )
    if sqlstate.startswith(INVALID_CATALOG_NAME):
        return Failure("unknown database", f"database {place.database} does not exist ({code})")
    if sqlstate == "53300":
        return Failure(
            "too many connections",
            "too many connections: the server's max_connections (less the slots reserved "
            "for superusers), or the role's or the database's CONNECTION LIMIT, is used up "
            f"({code})",
        )
    if sqlstate.startswith(INSUFFICIENT_RESOURCES):
        return Failure("the database server is out of resources",
                       f"the database server is out of resources ({code})")  # fmt: skip
    if sqlstate == "57P03":
        return Failure(
            "the database is starting up or shutting down",
            f"the database server is starting up, shutting down or in recovery and accepts "
            f"no connections now ({code})",
        )
    if sqlstate in ("57P01", "57P02"):
        return Failure(
            "the database is shutting down",
            "the server ended the connection: it is shutting down or restarting, or an "
            f"administrator terminated the session ({code})",
        )
    if sqlstate.startswith(OPERATOR_INTERVENTION):
        return Failure("the connection was ended by the server",
                       f"the server ended the connection ({code})")  # fmt: skip
    if sqlstate.startswith(CONNECTION_EXCEPTION):
        return Failure("connection failure", f"the connection to {place.server} failed ({code})")
    return None


def by_exception(error: BaseException, place: Place) -> Failure | None:
    """The exceptions raised while connecting: ssl's, getaddrinfo's, timeouts, errnos."""
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = vetted_reason(getattr(error, "verify_message", None))
        return Failure(
            "TLS certificate verification failed",
            f"TLS certificate verification failed for {place.server}: {reason}",
        )
    if isinstance(error, ssl.SSLError):
        reason = str(error.reason or "")
        reason = reason if OPENSSL_REASON.fullmatch(reason) else "no reason given"
        return Failure("TLS handshake failed",
                       f"the TLS handshake with {place.server} failed ({reason})")  # fmt: skip
    if isinstance(error, socket.gaierror):
        if error.errno in UNKNOWN_NAME:
            return Failure("unknown host",
                           f"unknown host {place.server}: name resolution failed")  # fmt: skip
        return Failure(
            "name resolution failed",
            f"name resolution failed for {place.server} ({errno_name(error.errno)})",
        )
    if isinstance(error, TimeoutError):
        return Failure(
            "timed out",
            f"{place.server} did not answer in time (the URL's connect_timeout, else "
            "CONNECT_TIMEOUT, when connecting)",
        )
    if isinstance(error, ConnectionRefusedError):
        return Failure(
            "connection refused",
            f"connection refused by {place.server}: nothing listens there, or a firewall "
            "rejects the connection",
        )
    if type(error).__name__ == "ClientConfigurationError":  # asyncpg's, before connecting
        return Failure(
            "invalid connection settings",
            "asyncpg refused the connection settings (ClientConfigurationError): check the "
            "URL's TLS options and the certificate files they name",
        )
    if isinstance(error, ConnectionError) and error.errno is None:
        return asyncpg_connection_error(str(error), place)
    if sqlite_error := getattr(error, "sqlite_errorname", None):
        if sqlite_error == "SQLITE_CANTOPEN":
            return Failure(
                "the database file cannot be opened",
                f"the SQLite database file {place.database} cannot be opened (SQLITE_CANTOPEN): "
                "check that its directory exists and the app may write there",
            )
        return None
    if isinstance(error, OSError) and error.errno and error.errno > 0:
        return Failure(
            os.strerror(error.errno).lower(),
            f"{os.strerror(error.errno).lower()}: {place.server} ({errno_name(error.errno)})",
        )
    return None


def asyncpg_connection_error(message: str, place: Place) -> Failure:
    """asyncpg's own ConnectionErrors; the message is read to tell them apart, not shown."""
    if message.endswith(TLS_REFUSED):
        return Failure(
            "the server does not support TLS",
            f"{place.server} does not support TLS (SSL), which the URL requires (sslmode=require "
            "or stricter): turn on ssl on the server, or connect without TLS",
        )
    if TLS_ERROR_RESPONSE in message:
        return Failure(
            "TLS handshake failed",
            f"{place.server} answered the TLS request with an error: see the server's log",
        )
    return Failure("the connection was lost", f"the connection to {place.server} was lost")


def vetted_reason(reason: object) -> str:
    """A certificate check's reason, kept only if it is short, printable text."""
    if isinstance(reason, str) and reason.isprintable() and 0 < len(reason) <= MAX_REASON:
        return reason
    return "no reason given"


def errno_name(number: int | None) -> str:
    """``ECONNRESET`` for 104; getaddrinfo's negative codes by number."""
    if number is not None and number > 0:
        return errno.errorcode.get(number, f"errno {number}")
    return f"error {number}"

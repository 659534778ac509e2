"""The parameters a PostgreSQL URL may carry, and what asyncpg is given for each.

Provider consoles and libpq's documentation write URLs with libpq's parameters
(``?sslmode=require&channel_binding=require``, ``?connect_timeout=10``,
``?sslmode=verify-full&sslrootcert=ca.pem``). SQLAlchemy hands each query parameter to
``asyncpg.connect()`` as a keyword argument, and asyncpg stops at every name it does not
take, so the app reads them itself. Each parameter libpq documents (PostgreSQL's docs,
"Connection Strings", Parameter Key Words) is honoured, through asyncpg's own libpq-style
reading of TLS parameters where it has one, or refused with a line saying what to do.
Nothing is accepted that would then fail when a connection opens.

Standard library only: the template's bake-time check runs this very file, so a URL is
accepted when baking exactly when the app accepts it at startup.
"""

import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

# Handled by SQLAlchemy's asyncpg dialect itself: several hosts (host=h1:5432&host=h2:5432,
# or a Unix socket directory) and the size of its prepared statement cache.
SQLALCHEMY_PARAMETERS = ("host", "prepared_statement_cache_size")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_MODES = ("verify-ca", "verify-full")
# Written by JDBC, node-postgres and asyncpg's own ssl=True: TLS with the certificate
# checked against the system's CAs and the host name, libpq's verify-full.
SSL_WORDS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}  # fmt: skip
TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# libpq's default for ssl_min_protocol_version, which asyncpg applies too.
DEFAULT_MIN_TLS_VERSION = "TLSv1.2"
# The TLS parameters asyncpg reads from a libpq connection string itself (its
# connect_utils._parse_connect_dsn_and_args), with libpq's meaning.
ASYNCPG_TLS_PARAMETERS = (
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "sslnegotiation",
)  # fmt: skip
# Never logged: the passphrase of the client certificate's key.
SECRET_PARAMETERS = ("sslpassword",)
FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
UTF8_NAMES = ("utf8", "utf-8", "unicode")
# Seconds: a longer connect timeout is a typing mistake (the settings' limit too).
MAX_CONNECT_TIMEOUT = 7 * 24 * 3600
READ_README = "see the README's 'Database URL parameters'"

# libpq parameters asyncpg cannot honour, and what to do instead.
REFUSED = {
    "dbname": "give the database as the URL's path: ...@host:5432/dbname",
    "user": "give the user before the host: postgresql+asyncpg://user:password@host/dbname",
    "port": "give the port after the host: ...@host:5432/dbname",
    "hostaddr": "give the address as the URL's host: ...@192.0.2.10:5432/dbname",
    "service": "name the host, port and database in the URL (pg_service.conf is not read)",
    "servicefile": "name the host, port and database in the URL (pg_service.conf is not read)",
    "require_auth": "remove it: asyncpg answers the authentication method the server asks "
    "for; require a method in the server's pg_hba.conf (scram-sha-256)",
    "requirepeer": "remove it: asyncpg cannot check the peer of a Unix socket",
    "replication": "remove it: the app does not open replication connections",
    "keepalives": "remove it: asyncpg sets no TCP keepalives; pool_pre_ping and pool_recycle "
    "find dead connections (or set net.ipv4.tcp_keepalive_* on the host)",
    "tcp_user_timeout": "remove it: asyncpg sets no TCP_USER_TIMEOUT; CONNECT_TIMEOUT and "
    "STATEMENT_TIMEOUT bound the waits",
    "krbsrvname": "remove it: GSSAPI (Kerberos) authentication is not set up in this app",
    "gsslib": "remove it: GSSAPI (Kerberos) authentication is not set up in this app",
    "gssdelegation": "remove it: GSSAPI (Kerberos) authentication is not set up in this app",
    "sslcrldir": "give one CRL file as sslcrl=/path/to/root.crl",
    "sslkeylogfile": "remove it: set the SSLKEYLOGFILE environment variable instead",
    "load_balance_hosts": "remove it: asyncpg tries the hosts in the order given",
    "min_protocol_version": "remove it: asyncpg speaks protocol 3.0",
    "max_protocol_version": "remove it: asyncpg speaks protocol 3.0",
    "requiressl": "write sslmode=require",
    # Not libpq's, but found in URLs copied from other tools.
    "pgbouncer": "remove it (a Prisma setting); for PgBouncer set CONNECTION_POOLER=pgbouncer",
    "schema": "write options=-c%20search_path%3Dyour_schema (libpq's way)",
    "sslaccept": "write sslmode=verify-full, or sslmode=require (a Prisma setting)",
    "connection_limit": "remove it (a Prisma setting); the pool's size is POOL_SIZE",
    "pool_timeout": "remove it (a Prisma setting); the app's is POOL_TIMEOUT",
}
for _key in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
    REFUSED[_key] = REFUSED["keepalives"]
for _key in ("oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope"):
    REFUSED[_key] = "remove it: asyncpg does not do OAuth authentication"


class ConnectionParameters(NamedTuple):
    """What a URL's query asks for, sorted into what asyncpg takes.

    - ``connect_args``: keyword arguments for ``asyncpg.connect()`` (``timeout`` in
      seconds, ``target_session_attrs``, ``passfile``);
    - ``server_settings``: run-time parameters sent when a connection opens
      (``application_name``, ``options``);
    - ``tls``: libpq's TLS parameters, checked; ``tls_arguments()`` turns them into
      asyncpg's at startup, where the files they name can be read;
    - ``notes``: one line for each parameter read another way or dropped;
    - ``problems``: one line for each parameter refused, saying what to do.
    """

    connect_args: dict[str, Any]
    server_settings: dict[str, str]
    tls: dict[str, str]
    notes: list[str]
    problems: list[str]


def read_parameters(query: Mapping[str, str | Sequence[str]]) -> ConnectionParameters:
    """Sort a URL's query (SQLAlchemy's ``URL.query``: a value, or a tuple when repeated).

    Touches no file: it runs at bake time too, on a machine that may not hold them.
    """
    parameters = ConnectionParameters({}, {}, {}, [], [])
    values: dict[str, str] = {}
    for key, value in query.items():
        if key in SQLALCHEMY_PARAMETERS:
            continue
        if isinstance(value, str):
            values[key] = value
        else:
            parameters.problems.append(f"{key} is given {len(value)} times; give it once")
    _read_tls(values, parameters)
    _read_the_rest(values, parameters)
    return parameters


def _read_tls(values: dict[str, str], parameters: ConnectionParameters) -> None:
    notes, problems, tls = parameters.notes, parameters.problems, parameters.tls
    if "ssl" in values:
        # SQLAlchemy's and asyncpg's name for it: libpq's modes, or a yes/no word.
        word = SSL_WORDS.get(values["ssl"].lower())
        if word is True:
            if values.get("sslrootcert", "system") != "system":
                problems.append(
                    "ssl=true checks the certificate against the system's CAs, yet sslrootcert "
                    "names a file: write sslmode=verify-full instead of ssl=true"
                )
            values.setdefault("sslrootcert", "system")
            mode = "verify-full"
            notes.append(
                "ssl=true is read as sslmode=verify-full&sslrootcert=system (asyncpg's "
                "ssl=True): TLS, the certificate checked against the system's CAs and the "
                "host name; for a server whose certificate no public CA signed, use "
                "sslmode=verify-full&sslrootcert=/path/to/ca.pem, or sslmode=require"
            )
        elif word is False:
            mode = "disable"
        elif values["ssl"] in SSL_MODES:
            mode = values["ssl"]
        else:
            mode = values.get("sslmode", "disable")
            problems.append(
                f"ssl={values['ssl']}: accepted: true, false, or one of libpq's sslmode "
                f"values ({', '.join(SSL_MODES)})"
            )
        if values.setdefault("sslmode", mode) != mode:
            problems.append(
                f"ssl={values['ssl']} and sslmode={values['sslmode']} disagree; give only sslmode"
            )
        del values["ssl"]
    mode = values.get("sslmode")
    if values.get("sslrootcert") == "system":
        # libpq 16+: the system's CAs, and nothing weaker than verify-full.
        mode = values.setdefault("sslmode", "verify-full")
        if mode != "verify-full":
            problems.append(
                f"sslrootcert=system needs sslmode=verify-full (libpq's rule), not sslmode={mode}"
            )
    if mode is not None and mode not in SSL_MODES:
        problems.append(f"sslmode={mode} is not a mode; accepted: {', '.join(SSL_MODES)}")
    for key in ("ssl_min_protocol_version", "ssl_max_protocol_version"):
        if key in values and values[key] not in TLS_VERSIONS:
            problems.append(
                f"{key}={values[key]} is not a TLS version; accepted: {', '.join(TLS_VERSIONS)}"
            )
    negotiation = values.get("sslnegotiation")
    if negotiation not in (None, "postgres", "direct"):
        problems.append(f"sslnegotiation={negotiation}: accepted: postgres, direct")
    if negotiation == "direct" and mode not in ("require", *VERIFYING_MODES):
        problems.append("sslnegotiation=direct needs sslmode=require, verify-ca or verify-full")
    certificate_mode = values.pop("sslcertmode", "allow")
    if certificate_mode not in ("allow", "disable", "require"):
        problems.append(f"sslcertmode={certificate_mode}: accepted: allow, disable, require")
    elif certificate_mode == "require" and "sslcert" not in values:
        problems.append("sslcertmode=require needs sslcert=/path/to/client.crt")
    elif certificate_mode == "disable" and "sslcert" in values:
        problems.append("sslcertmode=disable and sslcert disagree; remove one")
    if values.pop("sslsni", "1") != "1":
        problems.append("sslsni: remove it: asyncpg always sends the host name (SNI)")
    if values.pop("sslcompression", "0") != "0":
        notes.append("sslcompression=1 is dropped: OpenSSL and PostgreSQL 14+ never compress")
    binding = values.pop("channel_binding", None)
    if binding not in (None, "disable", "prefer", "require"):
        problems.append(f"channel_binding={binding}: accepted: disable, prefer, require")
    elif binding == "require":
        notes.append(channel_binding_note(mode))
    if values.pop("gssencmode", "prefer") not in ("disable", "prefer"):
        problems.append(
            "gssencmode=require: asyncpg cannot encrypt with GSSAPI; write sslmode=require "
            "(or verify-full) for an encrypted connection"
        )
    for key in ASYNCPG_TLS_PARAMETERS:
        if key in values:
            tls[key] = values.pop(key)


def channel_binding_note(mode: str | None) -> str:
    """The note for channel_binding=require, which asyncpg cannot honour (asyncpg's SCRAM
    has no SCRAM-SHA-256-PLUS): what still protects the connection without it."""
    note = "channel_binding=require is dropped: asyncpg does not do SCRAM channel binding"
    if mode == "verify-full":
        return f"{note}; sslmode=verify-full already proves the server is who it claims to be"
    return (
        f"{note}; the connection is still encrypted (sslmode={mode or 'prefer'}), and "
        "sslmode=verify-full (sslrootcert=system for a public CA) would also prove the "
        "server is who it claims to be"
    )


def _read_the_rest(values: dict[str, str], parameters: ConnectionParameters) -> None:
    connect_args, problems = parameters.connect_args, parameters.problems
    if "connect_timeout" in values:
        timeout = values.pop("connect_timeout")
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= MAX_CONNECT_TIMEOUT:
            problems.append(
                f"connect_timeout={timeout}: accepted: seconds above 0, at most "
                f"{MAX_CONNECT_TIMEOUT} (0, libpq's 'wait forever', would let requests hang)"
            )
        else:
            connect_args["timeout"] = seconds
    name = values.pop("application_name", None) or values.pop("fallback_application_name", None)
    values.pop("fallback_application_name", None)
    if name:
        parameters.server_settings["application_name"] = name
    if "options" in values:
        # Sent as the "options" startup parameter, as libpq sends it: the server reads the
        # -c name=value (or --name=value) switches in it.
        options = values.pop("options")
        if options_are_settings(options):
            parameters.server_settings["options"] = options
        else:
            problems.append(
                f"options={options}: accepted: -c name=value switches (percent-encoded: "
                "options=-c%20search_path%3Dapp), as libpq takes them"
            )
    encoding = values.pop("client_encoding", "utf8")
    if encoding.lower() not in UTF8_NAMES:
        problems.append(f"client_encoding={encoding}: asyncpg speaks UTF8 only; remove it")
    target = values.pop("target_session_attrs", None)
    if target is not None:
        if target in TARGET_SESSION_ATTRS:
            connect_args["target_session_attrs"] = target
        else:
            problems.append(
                f"target_session_attrs={target}: accepted: {', '.join(TARGET_SESSION_ATTRS)}"
            )
    if "passfile" in values:
        connect_args["passfile"] = values.pop("passfile")
    if values.pop("keepalives", "0") != "0":
        problems.append(f"keepalives: {REFUSED['keepalives']}")
    if values.pop("load_balance_hosts", "disable") != "disable":
        problems.append(f"load_balance_hosts: {REFUSED['load_balance_hosts']}")
    for key in values:
        if key == "password":
            problems.append(
                "the password is in the query string, where it would be logged; write "
                "postgresql+asyncpg://user:password@host:5432/dbname"
            )
        elif key in REFUSED:
            problems.append(f"{key}: {REFUSED[key]}")
        else:
            problems.append(f"{key} is not a connection parameter this app knows; {READ_README}")


def options_are_settings(options: str) -> bool:
    """Whether libpq's ``options`` holds only run-time settings: ``-c name=value``,
    ``-cname=value`` or ``--name=value`` (PostgreSQL's docs, "Connection Strings")."""
    words = options.split()
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = "-c" + words.pop(0)
        if not (word.startswith(("-c", "--")) and "=" in word):
            return False
    return True


def tls_arguments(tls: Mapping[str, str]) -> dict[str, Any]:
    """``asyncpg.connect()`` arguments for libpq's TLS parameters, the files they name read.

    asyncpg reads libpq's TLS parameters from a connection string (``dsn``) with libpq's
    meaning, ``~/.postgresql/root.crt`` and the ``PGSSL*`` variables included; the URL's
    host, user and database still come from SQLAlchemy. ``sslrootcert=system``, which
    asyncpg does not know, gets a context with the system's CAs (``ssl`` argument).

    Raises ``ValueError``, one line per problem, when a file named cannot be used.
    """
    problems = [problem for key in FILE_PARAMETERS if (problem := file_problem(key, tls))]
    if tls.get("sslmode") in VERIFYING_MODES and "sslrootcert" not in tls:
        problems += default_root_certificate_problems(tls["sslmode"])
    if problems:
        raise ValueError("\n".join(problems))
    if tls.get("sslrootcert") == "system":
        return {"ssl": system_ca_context(tls)}
    return {"dsn": "postgresql://?" + urlencode(tls)} if tls else {}


def file_problem(key: str, parameters: Mapping[str, str]) -> str | None:
    path = parameters.get(key)
    if path is None or (key == "sslrootcert" and path == "system"):
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return f"{key}={path}: cannot be read ({error.strerror}); give a readable file"
    try:
        if key in ("sslrootcert", "sslcrl"):
            ssl.create_default_context().load_verify_locations(cafile=path)
        elif key == "sslcert":
            password = parameters.get("sslpassword", "")
            ssl.create_default_context().load_cert_chain(
                path, parameters.get("sslkey"), password=lambda: password
            )
    except ssl.SSLError as error:
        return f"{key}={path}: not a usable PEM file ({error.reason or error})"
    return None


def default_root_certificate_problems(mode: str) -> list[str]:
    """libpq verifies against ~/.postgresql/root.crt (or $PGSSLROOTCERT) when no
    sslrootcert is given; asyncpg does the same. Missing, every connection would fail."""
    path = os.environ.get("PGSSLROOTCERT") or str(Path("~/.postgresql/root.crt").expanduser())
    if os.access(path, os.R_OK):
        return []
    return [
        f"sslmode={mode} needs the CA certificate that signed the server's: add "
        f"sslrootcert=/path/to/ca.pem (sslrootcert=system for a public CA); {path} is missing"
    ]


def system_ca_context(tls: Mapping[str, str]) -> ssl.SSLContext:
    """libpq's sslrootcert=system: verify-full against the system's CAs (what asyncpg's
    ``ssl=True`` does), with the URL's protocol versions and client certificate."""
    context = ssl.create_default_context()
    minimum = tls.get("ssl_min_protocol_version", DEFAULT_MIN_TLS_VERSION)
    context.minimum_version = TLS_VERSIONS[minimum]
    if "ssl_max_protocol_version" in tls:
        context.maximum_version = TLS_VERSIONS[tls["ssl_max_protocol_version"]]
    if "sslcrl" in tls:
        context.load_verify_locations(cafile=tls["sslcrl"])
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    if "sslcert" in tls:
        password = tls.get("sslpassword", "")
        context.load_cert_chain(tls["sslcert"], tls.get("sslkey"), password=lambda: password)
    return context

"""The parameters a PostgreSQL URL may carry, and what asyncpg is given for each.

Provider consoles and libpq's documentation write URLs with libpq's parameters
(``?sslmode=require&channel_binding=require``, ``?connect_timeout=10``,
``?sslmode=verify-full&sslrootcert=ca.pem``). SQLAlchemy hands each query parameter to
``asyncpg.connect()`` as a keyword argument, and asyncpg stops at every name it does not
take, so the app reads them itself. Each parameter libpq documents (PostgreSQL's docs,
"Connection Strings", Parameter Key Words) is honoured, through asyncpg's own libpq-style
reading of TLS parameters where it has one, or refused with a line saying what to do.
Nothing is accepted that would then fail, or be ignored, when a connection opens.

Standard library only: the template's bake-time check runs this very file, so a URL is
accepted when baking exactly when the app accepts it at startup.
"""

import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

# Read by SQLAlchemy's asyncpg dialect itself: several hosts (host=h1:5432&host=h2:5432,
# or a Unix socket directory) and the size of its prepared statement cache.
SQLALCHEMY_PARAMETERS = ("host", "prepared_statement_cache_size")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Modes in which libpq connects only over TLS.
TLS_ONLY_MODES = ("require", "verify-ca", "verify-full")
VERIFYING_MODES = ("verify-ca", "verify-full")
# ssl= as JDBC, node-postgres and asyncpg (ssl=True) take it: yes means TLS with the
# certificate checked against the system's CAs and the host name, libpq's verify-full.
SSL_YES = ("true", "1", "yes", "on")
SSL_NO = ("false", "0", "no", "off")
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
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "sslnegotiation",
)  # fmt: skip
# Parameters naming a file, read at startup.
FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
UTF8_NAMES = ("utf8", "utf-8", "unicode")
# Seconds: a longer connect timeout is a typing mistake (the settings' limit too).
MAX_CONNECT_TIMEOUT = 7 * 24 * 3600
# What some values are when not given: libpq's defaults, and what asyncpg does anyway.
AS_ASYNCPG_DOES = {
    "sslcertmode": "allow",
    "sslsni": "1",
    "sslcompression": "0",
    "gssencmode": ("disable", "prefer"),
    "keepalives": "0",
    "load_balance_hosts": "disable",
    "channel_binding": ("disable", "prefer"),
}
GSSAPI = "remove it: GSSAPI (Kerberos) authentication is not set up in this app"
KEEPALIVES = (
    "remove it: asyncpg sets no TCP keepalives; pool_pre_ping and pool_recycle find dead "
    "connections (or set net.ipv4.tcp_keepalive_* on the host)"
)
PRISMA = "(a Prisma setting)"
# libpq parameters, and a few from other tools' URLs, that the app cannot honour: what to
# do instead.
REFUSED = {
    "dbname": "give the database as the URL's path: ...@host:5432/dbname",
    "user": "give the user before the host: postgresql+asyncpg://user:password@host/dbname",
    "password": "it would be written wherever the URL goes: give it after the user name, "
    "postgresql+asyncpg://user:password@host:5432/dbname",
    "port": "give the port after the host: ...@host:5432/dbname",
    "hostaddr": "give the address as the URL's host: ...@192.0.2.10:5432/dbname",
    "service": "name the host, port and database in the URL (pg_service.conf is not read)",
    "servicefile": "name the host, port and database in the URL (pg_service.conf is not read)",
    "sslpassword": "a passphrase in the URL would be written wherever the URL goes: remove "
    "it and give a client key without one (openssl pkey -in client.key -out plain.key), "
    "readable by the app's user only",
    "sslcertmode": "remove it: asyncpg sends a client certificate when sslcert names one "
    "(libpq's sslcertmode=allow)",
    "sslsni": "remove it: asyncpg always sends the host name (SNI)",
    "sslcompression": "remove it: OpenSSL and PostgreSQL 14+ never compress",
    "sslcrldir": "give one CRL file as sslcrl=/path/to/root.crl",
    "sslkeylogfile": "remove it: set the SSLKEYLOGFILE environment variable instead",
    "gssencmode": "asyncpg cannot encrypt with GSSAPI: write sslmode=require (or "
    "verify-full) for an encrypted connection",
    "krbsrvname": GSSAPI,
    "gsslib": GSSAPI,
    "gssdelegation": GSSAPI,
    "require_auth": "remove it: asyncpg answers the authentication method the server asks "
    "for; require a method in the server's pg_hba.conf (scram-sha-256)",
    "requirepeer": "remove it: asyncpg cannot check the peer of a Unix socket",
    "requiressl": "remove it (libpq dropped it): write sslmode=require for TLS",
    "replication": "remove it: the app does not open replication connections",
    "keepalives": KEEPALIVES,
    "keepalives_idle": KEEPALIVES,
    "keepalives_interval": KEEPALIVES,
    "keepalives_count": KEEPALIVES,
    "tcp_user_timeout": "remove it: asyncpg sets no TCP_USER_TIMEOUT; CONNECT_TIMEOUT and "
    "STATEMENT_TIMEOUT bound the waits",
    "load_balance_hosts": "remove it: asyncpg tries the hosts in the order given",
    "min_protocol_version": "remove it: asyncpg speaks protocol 3.0",
    "max_protocol_version": "remove it: asyncpg speaks protocol 3.0",
    "oauth_issuer": "remove it: asyncpg does not do OAuth authentication",
    "oauth_client_id": "remove it: asyncpg does not do OAuth authentication",
    "oauth_client_secret": "remove it: asyncpg does not do OAuth authentication",
    "oauth_scope": "remove it: asyncpg does not do OAuth authentication",
    "pgbouncer": f"remove it {PRISMA}; for PgBouncer set CONNECTION_POOLER=pgbouncer",
    "schema": f"write options=-c%20search_path%3Dyour_schema instead {PRISMA}",
    "sslaccept": f"write sslmode=verify-full, or sslmode=require {PRISMA}",
    "connection_limit": f"remove it {PRISMA}; the pool's size is POOL_SIZE",
    "pool_timeout": f"remove it {PRISMA}; the app's is POOL_TIMEOUT",
}


class ConnectionParameters(NamedTuple):
    """What a URL's query asks for, sorted into what asyncpg takes.

    - ``connect_args``: keyword arguments for ``asyncpg.connect()`` (``timeout`` in
      seconds, ``target_session_attrs``, ``passfile``);
    - ``server_settings``: run-time parameters sent when a connection opens
      (``application_name``, ``options``);
    - ``tls``: libpq's TLS parameters, checked; ``tls_arguments()`` turns them into
      asyncpg's, and ``file_problems()`` checks the files they name, at startup;
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
        if isinstance(value, str):
            values[key] = value
        elif key != "host":
            parameters.problems.append(f"{key} is given {len(value)} times; give it once")
    check_sqlalchemy_parameters(query, parameters.problems)
    for key in SQLALCHEMY_PARAMETERS:
        values.pop(key, None)
    mode = read_ssl_mode(values, parameters)
    check_tls_options(values, mode, parameters.problems)
    read_channel_binding(values, mode, parameters)
    for key in ASYNCPG_TLS_PARAMETERS:
        if key in values:
            parameters.tls[key] = values.pop(key)
    read_connection_options(values, parameters)
    for key, value in values.items():
        usual = AS_ASYNCPG_DOES.get(key)
        if value == usual or (isinstance(usual, tuple) and value in usual):
            continue  # what asyncpg does anyway
        shown = key if key in ("password", "sslpassword") else f"{key}={value}"
        reason = REFUSED.get(key, "remove it: not a connection parameter this app knows")
        parameters.problems.append(f"{shown}: {reason}")
    return parameters


def check_sqlalchemy_parameters(
    query: Mapping[str, str | Sequence[str]], problems: list[str]
) -> None:
    """The values SQLAlchemy's dialect would otherwise fail on, or loop on, at connect."""
    size = query.get("prepared_statement_cache_size")
    if isinstance(size, str) and not size.isdigit():
        problems.append(
            f"prepared_statement_cache_size={size}: accepted: a whole number, 0 for no cache"
        )
    hosts = query.get("host")
    if isinstance(hosts, tuple) and len({":" in host.rpartition("]")[2] for host in hosts}) > 1:
        problems.append(
            "host: give a port with every host or with none (host=h1:5432&host=h2:5432), "
            "SQLAlchemy's rule for several hosts"
        )


def read_ssl_mode(values: dict[str, str], parameters: ConnectionParameters) -> str | None:
    """libpq's sslmode, from ``sslmode``, ``ssl`` (SQLAlchemy's and asyncpg's name) or
    ``sslrootcert=system``; it is left in ``values["sslmode"]``."""
    problems = parameters.problems
    if "ssl" in values:
        given = values.pop("ssl")
        if given.lower() in SSL_YES:
            mode = "verify-full"
            values.setdefault("sslrootcert", "system")
            parameters.notes.append(
                f"ssl={given} is read as sslmode=verify-full&sslrootcert=system (asyncpg's "
                "ssl=True): TLS, the certificate checked against the system's CAs and the "
                "host name; for a server whose certificate no public CA signed, write "
                "sslmode=verify-full&sslrootcert=/path/to/ca.pem, or sslmode=require"
            )
        elif given.lower() in SSL_NO:
            mode = "disable"
        elif given in SSL_MODES:
            mode = given
        else:
            problems.append(
                f"ssl={given}: accepted: true, false, or one of libpq's sslmode values "
                f"({', '.join(SSL_MODES)})"
            )
            return values.get("sslmode")
        if values.setdefault("sslmode", mode) != mode:
            problems.append(f"ssl={given} and sslmode={values['sslmode']} disagree; give sslmode")
    # libpq 16+: sslrootcert=system is the system's CAs, and nothing weaker than verify-full.
    if (
        values.get("sslrootcert") == "system"
        and values.setdefault("sslmode", "verify-full") != "verify-full"
    ):
        problems.append(
            f"sslrootcert=system needs sslmode=verify-full (libpq's rule), not "
            f"sslmode={values['sslmode']}"
        )
    mode = values.get("sslmode")
    if mode is not None and mode not in SSL_MODES:
        problems.append(f"sslmode={mode}: accepted: {', '.join(SSL_MODES)}")
    return mode


def check_tls_options(values: dict[str, str], mode: str | None, problems: list[str]) -> None:
    """The TLS parameters asyncpg reads itself: values it would refuse at connect time."""
    versions = []
    for key in ("ssl_min_protocol_version", "ssl_max_protocol_version"):
        if key in values:
            if values[key] in TLS_VERSIONS:
                versions.append(list(TLS_VERSIONS).index(values[key]))
            else:
                problems.append(f"{key}={values[key]}: accepted: {', '.join(TLS_VERSIONS)}")
    if len(versions) == 2 and versions[0] > versions[1]:
        problems.append(
            "ssl_min_protocol_version is above ssl_max_protocol_version: no TLS version is left"
        )
    negotiation = values.get("sslnegotiation")
    if negotiation not in (None, "postgres", "direct"):
        problems.append(f"sslnegotiation={negotiation}: accepted: postgres, direct")
    if negotiation == "direct" and mode not in TLS_ONLY_MODES:
        problems.append(
            "sslnegotiation=direct needs sslmode=require, verify-ca or verify-full (libpq's rule)"
        )


def read_channel_binding(
    values: dict[str, str], mode: str | None, parameters: ConnectionParameters
) -> None:
    """channel_binding=require, which provider consoles write, cannot be honoured: asyncpg's
    SCRAM has no SCRAM-SHA-256-PLUS. It is dropped with a note when TLS still protects the
    connection, and refused when it would be the only thing asking for TLS."""
    if values.get("channel_binding") != "require":
        return  # disable and prefer: what asyncpg does; other values are refused below
    del values["channel_binding"]
    if mode not in TLS_ONLY_MODES:
        parameters.problems.append(
            "channel_binding=require needs TLS, which asyncpg would not insist on: add "
            "sslmode=require, or sslmode=verify-full to also prove the server is who it "
            "claims to be"
        )
        return
    note = "channel_binding=require is dropped: asyncpg does not do SCRAM channel binding"
    if mode == "verify-full":
        note += "; sslmode=verify-full already proves the server is who it claims to be"
    else:
        note += (
            f"; the connection is still encrypted (sslmode={mode}), and sslmode=verify-full "
            "(sslrootcert=system for a public CA) would also prove the server is who it "
            "claims to be"
        )
    parameters.notes.append(note)


def read_connection_options(values: dict[str, str], parameters: ConnectionParameters) -> None:
    """The parameters that become connect arguments or server settings."""
    connect_args, problems = parameters.connect_args, parameters.problems
    if "connect_timeout" in values:
        timeout = values.pop("connect_timeout")
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if 0 < seconds <= MAX_CONNECT_TIMEOUT:
            connect_args["timeout"] = seconds
        else:
            problems.append(
                f"connect_timeout={timeout}: accepted: seconds above 0, at most "
                f"{MAX_CONNECT_TIMEOUT} (0, libpq's 'wait forever', would let requests hang)"
            )
    fallback = values.pop("fallback_application_name", None)
    if name := values.pop("application_name", None) or fallback:
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
    if (target := values.pop("target_session_attrs", None)) is not None:
        if target in TARGET_SESSION_ATTRS:
            connect_args["target_session_attrs"] = target
        else:
            problems.append(
                f"target_session_attrs={target}: accepted: {', '.join(TARGET_SESSION_ATTRS)}"
            )
    if "passfile" in values:
        connect_args["passfile"] = values.pop("passfile")


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
    return bool(options.split())


def file_problems(tls: Mapping[str, str], passfile: str | None = None) -> list[str]:
    """One line for each file the TLS parameters (or ``passfile``) name that cannot be
    used, as asyncpg would find at connect time. Run at startup, not at bake time."""
    files = dict(tls) | ({"passfile": passfile} if passfile else {})
    problems = [problem for key in FILE_PARAMETERS if (problem := file_problem(key, files))]
    if tls.get("sslmode") in VERIFYING_MODES and "sslrootcert" not in tls:
        # libpq and asyncpg then read $PGSSLROOTCERT or ~/.postgresql/root.crt.
        path = os.environ.get("PGSSLROOTCERT") or str(Path("~/.postgresql/root.crt").expanduser())
        if not os.access(path, os.R_OK):
            problems.append(
                f"sslmode={tls['sslmode']} needs the CA certificate that signed the server's: "
                f"add sslrootcert=/path/to/ca.pem (sslrootcert=system for a public CA); "
                f"{path} is missing"
            )
    return problems


def file_problem(key: str, files: Mapping[str, str]) -> str | None:
    """What is wrong with the file ``files[key]`` names, or None: it can be read, and a
    certificate or CRL file holds one in PEM (what OpenSSL, so asyncpg, loads)."""
    path = files.get(key)
    if path is None or (key == "sslrootcert" and path == "system"):
        return None
    # In a URL's query, '+' reads as a space (application/x-www-form-urlencoded).
    plus = "; a '+' in the URL reads as a space: write it as %2B" if " " in path else ""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return f"{key}={path}: cannot be read ({error.strerror}); give a readable file{plus}"
    try:
        if key in ("sslrootcert", "sslcrl"):
            ssl.create_default_context().load_verify_locations(cafile=path)
        elif key == "sslcert":
            ssl.create_default_context().load_cert_chain(path, files.get("sslkey"))
    except ssl.SSLError as error:
        return f"{key}={path}: not a usable PEM file ({error.reason or error})"
    return None


def tls_arguments(tls: Mapping[str, str]) -> dict[str, Any]:
    """``asyncpg.connect()`` arguments for libpq's TLS parameters.

    asyncpg reads libpq's TLS parameters from a connection string (``dsn``) with libpq's
    meaning, ``~/.postgresql/root.crt`` and the ``PGSSL*`` variables included; the URL's
    host, user and database still come from SQLAlchemy. ``sslrootcert=system``, which
    asyncpg does not know, gets a context with the system's CAs (``ssl`` argument).
    """
    if tls.get("sslrootcert") == "system":
        return {
            "ssl": system_ca_context(tls),
            "direct_tls": tls.get("sslnegotiation") == "direct",
        }
    return {"dsn": "postgresql://?" + urlencode(tls)} if tls else {}


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
        context.load_cert_chain(tls["sslcert"], tls.get("sslkey"))
    # PostgreSQL 17 requires it for direct TLS (sslnegotiation=direct), as asyncpg sets it.
    context.set_alpn_protocols(["postgresql"])
    return context

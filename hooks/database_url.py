"""Split a database URL into the part that may be committed and the password that may not.

The pattern is SQLAlchemy's own (``sqlalchemy.engine.url._parse_url``), so a URL is cut
exactly where the baked app will read it; the pieces stay percent-encoded as typed.
"""

import re
from typing import NamedTuple

_URL_PATTERN = re.compile(
    r"""
    (?P<scheme>[\w+]+)://
    (?:
        (?P<username>[^:/]*)
        (?::(?P<password>[^@]*))?
    @)?
    (?P<rest>.*)
    """,
    re.VERBOSE | re.DOTALL,
)


class DatabaseUrl(NamedTuple):
    scheme: str
    username: str | None
    password: str | None
    rest: str

    @property
    def without_password(self) -> str:
        """The URL as it may appear in tracked files: the user stays, the password goes."""
        userinfo = f"{self.username}@" if self.username is not None else ""
        return f"{self.scheme}://{userinfo}{self.rest}"

    @property
    def with_placeholder_password(self) -> str:
        """The URL with its password, if it has one, replaced by ``change-me``."""
        if not self.password:
            return self.without_password
        return f"{self.scheme}://{self.username}:change-me@{self.rest}"


def parse(url: str) -> DatabaseUrl | None:
    """Parse ``url`` the way SQLAlchemy does, or return None when it does not parse."""
    match = _URL_PATTERN.fullmatch(url.strip())
    if match is None:
        return None
    return DatabaseUrl(**match.groupdict())

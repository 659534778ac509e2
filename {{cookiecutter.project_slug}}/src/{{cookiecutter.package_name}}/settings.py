"""Runtime configuration, read from environment variables and a ``.env`` file.

Each field can be overridden by an environment variable of the same name in upper case
(``DATABASE_URL``, ``POOL_SIZE``, ...); the defaults are the answers given at bake time.
"""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # A secret so that repr(), logs and validation errors never show the password.
    database_url: SecretStr = SecretStr(
        {{ cookiecutter.database_url | without_password | python_string }},
    )
    # 0 would mean "no limit" to SQLAlchemy, so at least one connection.
    pool_size: int = Field(default={{ cookiecutter.pool_size | int }}, ge=1)
    # -1 means no limit on connections above pool_size; below that SQLAlchemy breaks.
    max_overflow: int = Field(default={{ cookiecutter.max_overflow | int }}, ge=-1)
    # Seconds a request waits for a free connection before it fails.
    pool_timeout: float = Field(default={{ cookiecutter.pool_timeout | float }}, gt=0)
    # Seconds after which a connection is replaced at its next checkout; -1 = never.
    pool_recycle: int = Field(default={{ cookiecutter.pool_recycle | int }}, ge=-1)
    # Test each connection with a round trip before use, so a restarted server costs no errors.
    pool_pre_ping: bool = {{ cookiecutter.pool_pre_ping }}

"""Liveness and readiness checks.

``/health`` answers without touching the database, so an orchestrator does not restart a
healthy process because the database is down. ``/health/db`` runs ``SELECT 1`` through
the pool (creating the tables first if the database was down at startup) and reports the
pool's numbers. When every connection is in use it answers at once, 200 with status
"busy": the database was reachable a moment ago, and a readiness probe that failed under
load would take every replica out of rotation together. When the database cannot be
used, it answers 503 with ``Retry-After`` and names why in ``detail``: "connection
refused", "authentication failed", "unknown database", ... (connection_failures.py).
"""

import logging

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..database import DATABASE_ERRORS, Database
from ..errors import diagnose

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])


class PoolStatus(BaseModel):
    size: int
    checked_out: int
    checked_in: int
    overflow: int
    max_overflow: int
    waiting: int


class DatabaseHealth(BaseModel):
    status: str
    dialect: str
    driver: str
    pool: PoolStatus
    detail: str | None = None


@router.get("")
async def liveness() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/db",
    response_model=DatabaseHealth,
    responses={503: {"model": DatabaseHealth, "description": "The database cannot be used now"}},
)
async def readiness(request: Request) -> DatabaseHealth | JSONResponse:
    database: Database = request.app.state.database
    if database.admission.full:
        return health_report(database, "busy", "every pooled connection is in use")
    try:
        await database.check()
    except DATABASE_ERRORS as error:
        # Named, never quoted: the exception's text can hold the URL (errors.py). The
        # detail is the kind ("authentication failed"); the log line names user, database
        # or server as well.
        failure = diagnose(error, database.url)
        logger.warning("Database %s is unreachable: %s", database.url, failure.detail)
        return unavailable(database, "unavailable", failure.kind)
    return health_report(database, "ok")


def unavailable(database: Database, state: str, detail: str) -> JSONResponse:
    report = health_report(database, state, detail)
    return JSONResponse(
        report.model_dump(),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def health_report(database: Database, state: str, detail: str | None = None) -> DatabaseHealth:
    return DatabaseHealth(
        status=state,
        dialect=database.url.get_backend_name(),
        driver=database.url.get_driver_name(),
        pool=PoolStatus(**database.pool_status()),
        detail=detail,
    )

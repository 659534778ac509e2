"""Liveness and readiness checks.

``/health`` answers without touching the database, so an orchestrator does not restart a
healthy process because the database is down. ``/health/db`` runs ``SELECT 1`` through
the pool (creating the tables first if the database was down at startup) and reports the
pool's numbers. When every connection is in use it answers at once, 200 with status
"busy": the database was reachable a moment ago, and a readiness probe that failed under
load would take every replica out of rotation together. When the database cannot be
used, it answers 503 with ``Retry-After`` and names why in ``detail``: "connection
refused", "authentication failed", "unknown database", ... (connection_failures.py).

With read replicas, ``replicas`` reports each one's pool and state, as its last check
found it (replicas.py). When the primary cannot be used but a replica can, the answer is
200 with status "degraded": reads go on, writes get 503s.
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


class ReplicaHealth(BaseModel):
    pool_name: str
    # "ok"; "lagging" or "down": left out of reads until it is back; "starting": not
    # checked yet.
    status: str
    lag_seconds: float | None
    pool: PoolStatus
    detail: str | None = None


class DatabaseHealth(BaseModel):
    status: str
    dialect: str
    driver: str
    pool_name: str
    pool: PoolStatus
    detail: str | None = None
    replicas: list[ReplicaHealth] = []


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
        if any(replica.usable for replica in database.replicas):
            # Reads go on from the replicas: keep this instance in rotation for them.
            detail = f"primary: {failure.kind}; reads are served by the replicas"
            return health_report(database, "degraded", detail)
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
        pool_name=database.name,
        pool=PoolStatus(**database.pool_status()),
        detail=detail,
        replicas=[
            ReplicaHealth(
                pool_name=replica.name,
                status=replica.state,
                lag_seconds=replica.lag,
                pool=PoolStatus(**replica.pool_status()),
                detail=replica.detail,
            )
            for replica in database.replicas
        ],
    )

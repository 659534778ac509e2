"""The application factory."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .database import DATABASE_ERRORS, Database
from .errors import add_error_handlers, describe
from .models import Base
from .replica_fallback import ReplicaFallback
from .routers import health, items
{%- if cookiecutter.metrics %}
from .settings import (
    Settings,
    has_placeholder_password,
    load_settings,
    tracing_requested,
)
{%- else %}
from .settings import Settings, has_placeholder_password, load_settings
{%- endif %}

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
{%- if cookiecutter.metrics %}
    metrics = None
    if settings.metrics:
        from . import metrics  # here, so that METRICS=false never loads prometheus_client
    tracing = None
    if tracing_requested():
        from .tracing import Tracing  # here: without traces asked for, none of it loads

        tracing = Tracing(service_name={{ cookiecutter.project_slug | python_string }})
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings, Base.metadata)
        app.state.database = database
{%- if cookiecutter.metrics %}
        if metrics is not None:
            # Before anything connects.
            for pool in (database, *database.replicas):
                metrics.PoolMetrics(pool)
        if tracing is not None:
            # The engine whose events the write engine shares (engine.py): both traced.
            replica_engines = (replica.engine for replica in database.replicas)
            tracing.instrument_engines(database.read_engine, *replica_engines)
{%- endif %}
        logger.info("Database %s, pool %s", database.url, database.pool_status())
        for replica in database.replicas:
            logger.info("Read replica %s, pool %s", replica.url, replica.pool_status())
        if has_placeholder_password(settings):
            logger.warning(
                "DATABASE_URL still has the placeholder password: set the real one in .env "
                "or the environment"
            )
        try:
            await database.check()
        except DATABASE_ERRORS as error:
            # Start anyway: /health answers and /health/db reports 503 until the database
            # is back, instead of an orchestrator restarting the process in a loop.
            reason = describe(error, database.url)
            logger.error("Database %s unreachable at startup: %s", database.url, reason)
        database.replicas.start()  # checks each replica now, and then every few seconds
        # Everything made so far lives as long as the process: freezing it keeps the
        # collector from walking it again, which under load made pauses of 50 ms or more.
        # (No gc.collect() first: at this point it frees about a hundred objects, and costs
        # a full pass of some 70 ms at every start.) A request allocates hundreds of objects
        # that die young: collecting every 20,000 allocations instead of every 700 saves the
        # collector most of its passes.
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        try:
            yield
        finally:
            # Closes every pooled connection while the event loop is still running.
            await database.dispose()
{%- if cookiecutter.metrics %}
            if metrics is not None:
                metrics.worker_stopped()
            if tracing is not None:
                tracing.shutdown()
{%- endif %}

    app = FastAPI(
        title={{ cookiecutter.project_name | python_string }},
        lifespan=lifespan,
{%- if cookiecutter.metrics %}
        # FastAPI's request spans, through the tracer provider of tracing.py.
        telemetry=None if tracing is None else tracing.telemetry,
{%- endif %}
    )
    add_error_handlers(app)
    if settings.replica_urls:
{%- if cookiecutter.metrics %}
        # Inside the metrics and traces: a read run again is one request to them.
{%- endif %}
        app.add_middleware(ReplicaFallback)
{%- if cookiecutter.metrics %}
    if metrics is not None:
        metrics.install(app, settings)
{%- endif %}
    app.include_router(items.router)
    app.include_router(health.router)
    return app

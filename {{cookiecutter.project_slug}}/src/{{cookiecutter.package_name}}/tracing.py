"""OpenTelemetry traces: a span for each request and for each SQL statement, sent by OTLP.

On when OpenTelemetry's own variable ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, in the environment or the settings file,
and ``OTEL_SDK_DISABLED`` is not ``true`` (settings.tracing_requested); otherwise app.py
never imports this module, and neither OpenTelemetry's SDK nor an instrumentation is
loaded.

The request spans are FastAPI's own (its native OpenTelemetry support, given the tracer
provider made here: one span per request, with children for the dependencies, the endpoint
and the serialization); the SQL spans come from OpenTelemetry's SQLAlchemy instrumentation.
A request's wait for a connection is inside its session dependency's span. The spans go
to the collector over OTLP/HTTP (protobuf, usually port 4318), in batches, from a thread of
the SDK's. The SDK reads the rest of its settings itself (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, ...:
https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/).

A SQL span carries the statement's text, never its parameters.
"""

import os
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.ext.asyncio import AsyncEngine

# OpenTelemetry's variables, the more specific first.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# Requests not worth a trace each: Prometheus's scrapes and the liveness probe.
UNTRACED_PATHS = frozenset({"/metrics", "/health"})


class Tracing:
    """The app's tracer provider, and the SQLAlchemy instrumentation that uses it.

    The provider is the process's own when one was set up before the app (OpenTelemetry's
    ``trace.set_tracer_provider``, as ``opentelemetry-instrument`` does); else the app's,
    exporting over OTLP/HTTP.

    ``telemetry`` is for ``FastAPI(telemetry=...)``: request spans through this provider.
    ``instrument_engines`` adds the SQL statements of the engines made in the lifespan;
    ``shutdown`` sends what is still buffered and takes the instrumentation off them.

    Raises SystemExit with one line for an endpoint that is not an http(s) URL, or an OTLP
    protocol other than http/protobuf (the one exporter installed).
    """

    def __init__(self, service_name: str) -> None:
        check_exporter_variables()
        configured = trace.get_tracer_provider()
        # A provider set up before the app (by `opentelemetry-instrument`, or by code of
        # yours, with exporters of its own) is used as it is: one provider per process.
        self._own = not isinstance(configured, TracerProvider)
        if isinstance(configured, TracerProvider):
            self.provider = configured
        else:
            # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the project's name.
            resource = Resource.create()
            if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: service_name}))
            self.provider = TracerProvider(resource=resource)
            # The exporter reads the endpoint, headers, timeout and compression itself.
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.telemetry: TelemetryConfig = {"tracer_provider": self.provider, "exclude": untraced}
        self._sqlalchemy = SQLAlchemyInstrumentor()

    def instrument_engines(self, *engines: AsyncEngine) -> None:
        """A span for each statement the engines run (and those of engines made from them
        with ``execution_options()``), a child of the span that was current."""
        self._sqlalchemy.instrument(
            engines=[engine.sync_engine for engine in engines],
            tracer_provider=self.provider,
            # The instrumentation (0.66b) declares "sqlalchemy < 2.1.0" and refuses to run
            # on 2.1, whose events it uses are unchanged: tests/test_tracing.py shows its
            # spans on the SQLAlchemy installed.
            skip_dep_check=True,
        )

    def shutdown(self) -> None:
        """Send the spans still buffered (the SDK waits up to 30 s) and stop instrumenting;
        a provider the app did not make is flushed, not shut down."""
        self._sqlalchemy.uninstrument()
        if self._own:
            self.provider.shutdown()
        else:
            self.provider.force_flush()


def check_exporter_variables() -> None:
    """Exit with one line naming the variable when the OTLP/HTTP exporter cannot use it."""
    for name in ENDPOINT_VARIABLES:
        endpoint = os.environ.get(name, "").strip()
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                shown = endpoint.rpartition("@")[2]  # never a user:password in it
                raise SystemExit(
                    f"{name}={shown!r}: not an http(s) URL; for example "
                    "http://localhost:4318, the collector's OTLP/HTTP port"
                )
            break  # the specific variable wins for traces
    for name in PROTOCOL_VARIABLES:
        protocol = os.environ.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise SystemExit(
                    f"{name}={protocol!r}: this app sends traces as http/protobuf only "
                    "(OTLP/HTTP, usually port 4318); unset it or set http/protobuf"
                )
            break


def untraced(scope: MutableMapping[str, Any]) -> bool:
    """FastAPI's ``exclude``: no trace for scrapes and liveness probes."""
    return scope.get("path") in UNTRACED_PATHS

"""Traces (tracing.py): spans for requests and SQL statements, sent by OTLP/HTTP to a real
HTTP server standing in for the OpenTelemetry Collector, which decodes what it receives."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from {{ cookiecutter.package_name }}.settings import (
    Settings,
    export_opentelemetry_variables,
    tracing_requested,
)
from {{ cookiecutter.package_name }}.tracing import check_exporter_variables

from .support import make_settings, serve

pytestmark = pytest.mark.anyio

MAIN = "{{ cookiecutter.package_name }}.main"
# What tracing.py loads, and only it: FastAPI itself imports OpenTelemetry's API.
OWN = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")


class Collector(ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf on ``POST /v1/traces``, as a collector does on port 4318,
    and keeps the spans and the service names they came with."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CollectorHandler)
        self.spans: list[Span] = []
        self.service_names: set[str] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces"
        assert self.headers["Content-Type"] == "application/x-protobuf"
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.server.service_names.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.endpoint)
    yield server
    server.shutdown()
    server.server_close()


def attributes(span: Span) -> dict[str, str | int]:
    return {item.key: item.value.string_value or item.value.int_value for item in span.attributes}


async def test_requests_and_their_sql_statements_are_traced(
    collector: Collector, database_url: str
) -> None:
    async with serve(make_settings(database_url)) as (_, client):
        created = await client.post("/items", json={"name": "traced", "description": None})
        assert created.status_code == 201
        item_id = created.json()["id"]
        assert (await client.get(f"/items/{item_id}")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200  # not traced
        assert (await client.get("/items")).status_code == 200
    # The lifespan's end sent what was still buffered.

    assert collector.service_names == {{ '{' }}{{ cookiecutter.project_slug | python_string }}{{ '}' }}
    server_spans = [span for span in collector.spans if span.kind == Span.SPAN_KIND_SERVER]
    routes = [attributes(span).get("http.route") for span in server_spans]
    assert routes == ["/items", "/items/{item_id}", "/items"]
    statements = [span for span in collector.spans if span.kind == Span.SPAN_KIND_CLIENT]
    for request, verb in zip(server_spans, ("INSERT", "SELECT", "SELECT"), strict=True):
        # Each request's statements are in its trace, below its span.
        own = [span for span in statements if span.trace_id == request.trace_id]
        texts = [str(attributes(span).get("db.statement", "")) for span in own]
        assert any(text.lstrip().upper().startswith(verb) for text in texts), texts
        assert all(span.parent_span_id for span in own)
    # The statement's text, never its parameters: the item's name is not in any span.
    assert not any("traced" in str(span) for span in statements)


async def test_otel_sdk_disabled_turns_traces_off(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # OpenTelemetry's switch for its SDK
    async with serve(settings) as (_, client):
        assert (await client.get("/items")).status_code == 200

    assert collector.spans == []


def test_a_tracer_provider_set_up_before_the_app_gets_its_spans(tmp_path: Path) -> None:
    """As ``opentelemetry-instrument`` or code of yours would set one up: with exporters of
    its own (here OpenTelemetry's in-memory one), and no OTLP endpoint. In a process of its
    own: a tracer provider, once set, is the process's for good."""
    code = f"""
import asyncio, json
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
import {MAIN}

async def main():
    app = {MAIN}.app
    async with LifespanManager(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/items")).status_code == 200

asyncio.run(main())
names = set(span.name.split()[0] for span in exporter.get_finished_spans())
print(json.dumps(sorted(names)))
"""
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=app_environment(tmp_path, "", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/t.db"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr
    # FastAPI's request span and its children, and the SQL statements'.
    assert {"GET", "SELECT", "fastapi.endpoint"} <= set(json.loads(ran.stdout))


def app_environment(tmp_path: Path, settings_file: str, **variables: str) -> dict[str, str]:
    """This run's environment, with ``settings_file`` as the app's .env, no OTEL_* variable
    but ``variables``, and an in-memory SQLite database unless they name another."""
    env_file = tmp_path / "settings.env"
    env_file.write_text(settings_file)
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("OTEL_")
    }
    environment |= {"DATABASE_URL": "sqlite+aiosqlite://", "ENV_FILE": str(env_file)}
    return environment | variables


def import_app(tmp_path: Path, settings_file: str, **variables: str) -> subprocess.CompletedProcess:
    """Import the app's main module in a new process (see ``app_environment``); it prints
    the modules of OpenTelemetry's SDK, exporters and instrumentations it loaded."""
    code = f"import sys, {MAIN}; print(sorted(m for m in sys.modules if m.startswith({OWN!r})))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=app_environment(tmp_path, settings_file, **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_an_endpoint_no_sdk_or_instrumentation_is_even_imported(tmp_path: Path) -> None:
    # FastAPI's own import of OpenTelemetry's API is a no-op without a provider.
    imported = import_app(tmp_path, "")

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


def test_an_endpoint_in_the_settings_file_is_read_and_checked(tmp_path: Path) -> None:
    imported = import_app(tmp_path, "OTEL_EXPORTER_OTLP_ENDPOINT=collector:4318\n")

    assert imported.returncode == 1
    assert imported.stderr.splitlines() == [
        "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318': not an http(s) URL; for example "
        "http://localhost:4318, the collector's OTLP/HTTP port"
    ]


def test_the_environment_wins_over_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("OTEL_EXPORTER_OTLP_ENDPOINT=http://from-file:4318\nOTEL_SERVICE_NAME=x\n")
    monkeypatch.setitem(Settings.model_config, "env_file", env_file)
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-environment:4318")

    export_opentelemetry_variables()

    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://from-environment:4318"
    assert os.environ["OTEL_SERVICE_NAME"] == "x"
    assert tracing_requested()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "grpc",
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc': this app sends traces as http/protobuf only "
            "(OTLP/HTTP, usually port 4318); unset it or set http/protobuf",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://user:secret@",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='': not an http(s) URL; for example "
            "http://localhost:4318, the collector's OTLP/HTTP port",
        ),
    ],
)
def test_what_the_exporter_cannot_use_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(variable, value)

    with pytest.raises(SystemExit) as refused:
        check_exporter_variables()

    assert str(refused.value) == message

"""An app with an extra slow route, for tests that run it in a real uvicorn process.

``uvicorn tests.pool.apps:app_with_slow_route --factory``, with settings from the environment.
"""

import asyncio
import os

from fastapi import FastAPI
from sqlalchemy import select

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import SessionDep
from {{ cookiecutter.package_name }}.logs import configure_logging
from {{ cookiecutter.package_name }}.models import Item


def app_with_slow_route() -> FastAPI:
    configure_logging("INFO")
    app = create_app()

    @app.get("/slow")
    async def slow(session: SessionDep) -> dict[str, int]:
        """Holds its connection for SLOW_SECONDS, as a long request would."""
        items = (await session.scalars(select(Item))).all()
        await asyncio.sleep(float(os.environ.get("SLOW_SECONDS", "1.5")))
        return {"items": len(items)}

    return app

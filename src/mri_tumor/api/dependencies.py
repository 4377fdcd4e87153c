"""Request dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import WithJsonSchema

from mri_tumor.api.schemas import MODEL_QUERY_DESCRIPTION
from mri_tumor.api.service import Service
from mri_tumor.inference.model_folder import SHIPPED_MODELS


def get_service(request: Request) -> Service:
    """The process's :class:`Service`, kept on the application's state."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

# ``?model=NAME``: any string gets through validation, so that an unknown name (or a path)
# is answered by the service with 404 and a detail naming the shipped models; the schema
# lists the names that work.
ModelQuery = Annotated[
    str | None,
    WithJsonSchema({"type": "string", "enum": list(SHIPPED_MODELS)}),
    Query(description=MODEL_QUERY_DESCRIPTION),
]

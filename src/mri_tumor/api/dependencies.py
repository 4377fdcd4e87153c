"""Request dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mri_tumor.api.service import Service


def get_service(request: Request) -> Service:
    """The process's :class:`Service`, kept on the application's state."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

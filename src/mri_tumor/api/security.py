"""The optional API key: ``/v1/*`` need the ``X-API-Key`` header when the server sets one."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader

from mri_tumor.api.dependencies import ServiceDep
from mri_tumor.api.settings import API_KEY_HEADER, ENV_API_KEY

api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description=f"required when the server sets {ENV_API_KEY}")


def require_api_key(service: ServiceDep,
                    key: Annotated[str | None, Security(api_key_scheme)] = None) -> None:
    """401 unless the server has no key or the request carries the matching one."""
    expected = service.settings.api_key
    if expected is None:
        return
    if key is None:
        raise HTTPException(401, f"Missing {API_KEY_HEADER} header: this server requires an "
                                 "API key.", headers={"WWW-Authenticate": API_KEY_HEADER})
    # Constant-time comparison: the time taken must not reveal how much of the key matched.
    if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape")):
        raise HTTPException(401, f"Wrong {API_KEY_HEADER}.",
                            headers={"WWW-Authenticate": API_KEY_HEADER})

"""One error shape for the JSON API, whoever finds the error.

A 422 is always ``{"detail": [{"loc": [...], "msg": "..."}]}``: pydantic's request errors and the
services' ``ValidationFailed`` alike (without pydantic's echo of the input, which may be a
patient's details). Other errors are ``{"detail": "..."}``. Errors are raised, never returned,
so the request's database session rolls back and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from aftercare.errors import Conflict, NotFound
from aftercare.validation import FieldError, ValidationFailed
from aftercare.web.api.schemas import ErrorOut, ValidationErrorOut


def field_errors(errors: Iterable[FieldError], *, prefix: Sequence[str | int]) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": [*prefix, *e.loc], "msg": e.msg} for e in errors],
    )


# Pydantic's message for these quotes a regular expression; say what it means instead.
_MESSAGES = {"string_pattern_mismatch": "contains characters that are not allowed"}


def _from_pydantic(errors: Sequence[Any]) -> HTTPException:
    detail = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": _MESSAGES.get(e.get("type", ""), str(e.get("msg", "is not valid"))),
        }
        for e in errors
    ]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


class ApiRoute(APIRoute):
    """A route that maps the services' exceptions to 404, 409 and 422 responses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise _from_pydantic(exc.errors()) from None
            except StarletteHTTPException as exc:
                if exc.status_code != status.HTTP_400_BAD_REQUEST:
                    raise
                # FastAPI's answer to a body it cannot decode at all (not UTF-8): bad input too.
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    detail=[{"loc": ["body"], "msg": str(exc.detail)}],
                ) from None
            except ValidationFailed as exc:
                raise field_errors(exc.errors, prefix=("body",)) from None
            except NotFound as exc:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
            except Conflict as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None

        return route


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error responses a route can give."""
    described = {
        401: "No API token, or a bad or revoked one.",
        403: "An admin account is required.",
        404: "No such record.",
        409: "The change makes no sense in the record's current state.",
        422: "A field is wrong: each is named with the reason.",
    }
    return {
        code: {
            "model": ValidationErrorOut if code == 422 else ErrorOut,
            "description": described[code],
        }
        for code in codes
    }

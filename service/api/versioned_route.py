"""One endpoint, served at a model's path (its default version) and at one version's path.

`@versioned_route(router, "POST", "/models/{name}{version}/infer", ...)` registers the function
twice: at `/models/{name}/infer`, where it is called with `version=None`, and at
`/models/{name}/versions/{version}/infer`. A stacked pair of decorators cannot do this: the
default path has no `{version}`, so FastAPI would turn the parameter into a query parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, get_type_hints

from fastapi import APIRouter
from fastapi.params import Depends
from starlette.responses import Response

Endpoint = Callable[..., Awaitable[Response]]
VERSION_SEGMENT = "/versions/{version}"


def _resolved_signature(endpoint: Endpoint) -> inspect.Signature:
    # FastAPI resolves string annotations in the endpoint's module; the wrapper below lives in
    # this one, so its signature must carry the types themselves.
    hints = get_type_hints(endpoint, include_extras=True)
    signature = inspect.signature(endpoint)
    return signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )


def versioned_route(
    router: APIRouter,
    method: str,
    path: str,
    *,
    summary: str,
    dependencies: Sequence[Depends] | None = None,
) -> Callable[[Endpoint], Endpoint]:
    if "{version}" not in path:
        raise ValueError(f"{path!r} has no {{version}} placeholder")

    def register(endpoint: Endpoint) -> Endpoint:
        signature = _resolved_signature(endpoint)
        if "version" not in signature.parameters:
            raise TypeError(f"{endpoint.__name__} takes no `version` parameter")
        with_version = signature.replace(
            parameters=[
                p.replace(annotation=str) if p.name == "version" else p
                for p in signature.parameters.values()
            ]
        )
        without_version = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "version"]
        )

        async def default_version(**kwargs: Any) -> Response:
            return await endpoint(version=None, **kwargs)

        async def one_version(**kwargs: Any) -> Response:
            return await endpoint(**kwargs)

        default_version.__signature__ = without_version  # type: ignore[attr-defined]
        one_version.__signature__ = with_version  # type: ignore[attr-defined]
        for wrapper, segment, scope in (
            (default_version, "", "default version"),
            (one_version, VERSION_SEGMENT, "one version"),
        ):
            router.add_api_route(
                path.replace("{version}", segment),
                wrapper,
                methods=[method],
                summary=f"{summary} ({scope})",
                name=f"{endpoint.__name__}_{scope.replace(' ', '_')}",
                dependencies=dependencies,
            )
        return endpoint

    return register

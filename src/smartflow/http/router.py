"""Method + path routing, compiled when a route is added.

Static paths are one dict lookup; templated paths ("{name}" for one segment,
"{name:path}" for the rest of the path) are regexes compiled at `add()` time
and tried in the order added.  A path that matches with the wrong method is a
405 carrying `Allow`; HEAD falls back to GET (the server drops the body).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]

_PARAM_RE = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::(path|str))?}")


def compile_path(path: str) -> re.Pattern[str] | None:
    """A regex for a templated path, or None when the path is static."""
    if "{" not in path:
        return None
    pattern = ["^"]
    position = 0
    for match in _PARAM_RE.finditer(path):
        pattern.append(re.escape(path[position : match.start()]))
        name, kind = match.group(1), match.group(2)
        pattern.append(f"(?P<{name}>.+)" if kind == "path" else f"(?P<{name}>[^/]+)")
        position = match.end()
    rest = path[position:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"bad route template {path!r}")
    pattern.append(re.escape(rest))
    pattern.append("$")
    return re.compile("".join(pattern))


class _TemplateRoute:
    __slots__ = ("handlers", "regex", "template")

    def __init__(self, template: str, regex: re.Pattern[str]) -> None:
        self.template = template
        self.regex = regex
        self.handlers: dict[str, Handler] = {}


class Router:
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        self._templates: list[_TemplateRoute] = []
        self._template_by_path: dict[str, _TemplateRoute] = {}

    def add(self, methods: str | Sequence[str], path: str, handler: Handler) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        method_list = [methods] if isinstance(methods, str) else list(methods)
        regex = compile_path(path)
        if regex is None:
            table = self._static.setdefault(path, {})
        else:
            route = self._template_by_path.get(path)
            if route is None:
                route = _TemplateRoute(path, regex)
                self._template_by_path[path] = route
                self._templates.append(route)
            table = route.handlers
        for method in method_list:
            table[method.upper()] = handler

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], str]:
        """(handler, path params, route template); raises HTTPError 404 / 405."""
        allowed: dict[str, Handler] | None = None
        table = self._static.get(path)
        if table is not None:
            handler = table.get(method) or (table.get("GET") if method == "HEAD" else None)
            if handler is not None:
                return handler, {}, path
            allowed = table
        for route in self._templates:
            found = route.regex.match(path)
            if found is None:
                continue
            table = route.handlers
            handler = table.get(method) or (table.get("GET") if method == "HEAD" else None)
            if handler is not None:
                return handler, found.groupdict(), route.template
            if allowed is None:
                allowed = table
        if allowed is not None:
            methods = set(allowed)
            if "GET" in methods:
                methods.add("HEAD")
            allow = ", ".join(sorted(methods))
            raise HTTPError(
                405, f"Method {method} not allowed on {path}", headers=[("allow", allow)]
            )
        raise HTTPError(404, f"Unknown path: {path}", code="not_found")

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        handler, params, _template = self.match(method, path)
        return handler, params

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        handler, params, template = self.match(request.method, request.path)
        request.path_params = params
        request.route = template
        return await handler(request)

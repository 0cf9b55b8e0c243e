"""Smartflow's HTTP/1.1 + HTTP/2 server: sans-IO protocols, one transport."""

from __future__ import annotations

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse, error_response, json_response
from smartflow.http.router import Handler, Router
from smartflow.http.transport import HTTPServer, RequestObserver

__all__ = [
    "HTTPError",
    "HTTPServer",
    "Handler",
    "Request",
    "RequestObserver",
    "Response",
    "Router",
    "StreamingResponse",
    "error_response",
    "json_response",
]

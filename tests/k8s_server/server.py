"""The HTTP face of the fake API server: discovery (/version, /api, /apis, resource lists),
get/list/create/replace/merge-patch (and strategic merge of keyed lists)/delete (with uid and
resourceVersion preconditions) on namespaced and cluster resources (and delete of a
collection by label selector), the pods' status, log, exec and portforward (WebSocket)
subresources; every request is recorded so tests can count calls. Stdlib only.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.k8s_server import exec_ws, portforward_ws
from tests.k8s_server.cluster import FakeCluster
from tests.k8s_server.store import KINDS, ApiError, Obj, ObjectStore

_RESOURCE_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update"]


def _resource_list(group_version: str) -> Obj:
    resources = []
    for k in KINDS.values():
        if k.group_version != group_version:
            continue
        resources.append(
            {
                "name": k.plural,
                "singularName": k.kind.lower(),
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": _RESOURCE_VERBS,
                "shortNames": list(k.short_names),
            }
        )
        resources.append(
            {"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced,
             "kind": k.kind, "verbs": ["get", "patch", "update"]}
        )  # fmt: skip
    if group_version == "v1":
        for sub in ("log", "exec", "portforward"):
            resources.append(
                {"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": "Pod",
                 "verbs": ["get"] if sub == "log" else ["create", "get"]}
            )  # fmt: skip
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _discovery(path: str) -> Obj | None:
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-skyform-fake",
                "platform": "linux/amd64"}  # fmt: skip
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": "127.0.0.1"}]}  # fmt: skip
    groups = sorted({k.group_version for k in KINDS.values() if "/" in k.group_version})
    if path == "/apis":
        items = []
        for gv in groups:
            entry = {"groupVersion": gv, "version": gv.split("/")[1]}
            items.append({"name": gv.split("/")[0], "versions": [entry],
                          "preferredVersion": entry})  # fmt: skip
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": items}
    if path == "/api/v1":
        return _resource_list("v1")
    if path.startswith("/apis/") and path[len("/apis/") :] in groups:
        return _resource_list(path[len("/apis/") :])
    if path.startswith("/openapi/"):
        return {"paths": {}}
    return None


class Route:
    """A resource path split into its parts: /api/v1/namespaces/ns/pods/name/status."""

    def __init__(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            self.group_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            self.group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        self.namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            self.namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KINDS or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        self.plural = rest[0]
        self.name: str | None = rest[1] if len(rest) > 1 else None
        self.sub: str | None = rest[2] if len(rest) > 2 else None
        kind = KINDS[self.plural]
        if kind.group_version != self.group_version or (self.namespace and not kind.namespaced):
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        if kind.namespaced and self.namespace is None and self.name is not None:
            raise ApiError(404, "NotFound", f"{self.plural} need a namespace: {path}")


def _flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter as the API server parses it (`true`, `True`, `1`)."""
    return (query.get(name) or ["false"])[0].lower() in ("true", "1")


class FakeApiServer:
    """Serves one fake cluster on 127.0.0.1 at an ephemeral port until `stop()`."""

    def __init__(self, pod_ip: str | None = None) -> None:
        self.store = ObjectStore()
        self.cluster = FakeCluster(self.store, pod_ip=pod_ip)
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def record(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        with self._lock:
            self.requests.append((method, path, query))

    def calls(self, method: str | None = None, path_suffix: str = "") -> list[str]:
        """Paths of the recorded requests, optionally of one method ending in `path_suffix`."""
        with self._lock:
            return [
                p
                for m, p, _ in self.requests
                if (method is None or m == method) and p.endswith(path_suffix)
            ]


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real server
    disable_nagle_algorithm = True  # else every call waits on delayed ACKs (~40 ms)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.api.record(method, url.path, query)
        body = self._body()
        try:
            if "protobuf" in (self.headers.get("Content-Type") or ""):
                raise ApiError(415, "UnsupportedMediaType", "the fake speaks JSON only")
            found = _discovery(url.path) if method == "GET" else None
            if found is not None:
                self._send(200, found)
                return
            route = Route(url.path)
            if route.sub == "exec":
                self._exec(route, query)
                return
            if route.sub == "portforward":
                self._portforward(route, query)
                return
            code, out = self._dispatch(method, route, query, body)
            if isinstance(out, str):
                self._send_text(code, out)
            else:
                self._send(code, out)
        except ApiError as err:
            self._send(err.code, err.status())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""  # drained always, for keep-alive
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None

    def _dispatch(
        self, method: str, route: Route, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Obj | str]:
        store, cluster = self.api.store, self.api.cluster
        ns = route.namespace or ""
        first = {k: v[0] for k, v in query.items()}
        if route.name is None:
            if method == "GET":
                if first.get("watch") in ("1", "true"):
                    raise ApiError(405, "MethodNotAllowed", "watch is not served by this fake")
                items = store.list(
                    route.plural, route.namespace, first.get("labelSelector"),
                    first.get("fieldSelector"),
                )  # fmt: skip
                return 200, self._list(route.plural, items)
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a JSON object body is required")
                created = store.create(route.plural, ns, body)
                if route.plural == "pods":
                    cluster.schedule(ns, created["metadata"]["name"])
                    created = store.get("pods", ns, created["metadata"]["name"])
                return 201, created
            if method == "DELETE":
                with store.lock:
                    gone = [
                        store.delete(route.plural, o["metadata"].get("namespace", ""),
                                     o["metadata"]["name"])
                        for o in store.list(route.plural, route.namespace,
                                            first.get("labelSelector"))
                    ]  # fmt: skip
                    if route.plural == "pods":
                        cluster.reschedule()
                return 200, self._list(route.plural, gone)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        return self._item(method, route, body)

    def _item(self, method: str, route: Route, body: Any) -> tuple[int, Obj | str]:
        store, cluster = self.api.store, self.api.cluster
        ns, name = route.namespace or "", str(route.name)
        part = "status" if route.sub == "status" else "spec"
        if route.sub == "log" and method == "GET":
            store.get("pods", ns, name)  # 404 for a missing pod
            return 200, cluster.logs.get((ns, name), "")
        if route.sub not in (None, "status"):
            raise ApiError(404, "NotFound", f"no subresource {route.sub!r}")
        if method == "GET":
            return 200, store.get(route.plural, ns, name)
        if method == "PUT":
            return 200, store.replace(route.plural, ns, name, body or {}, part)
        if method == "PATCH":
            if isinstance(body, list):
                raise ApiError(415, "UnsupportedMediaType", "JSON patch is not served; use merge")
            strategic = "strategic-merge-patch" in (self.headers.get("Content-Type") or "")
            return 200, store.update(route.plural, ns, name, body or {}, part, strategic)
        if method == "DELETE":
            preconditions = (body or {}).get("preconditions") if isinstance(body, dict) else None
            with store.lock:
                gone = store.delete(route.plural, ns, name, preconditions)
                if route.plural == "pods":
                    cluster.reschedule()
            return 200, gone
        raise ApiError(405, "MethodNotAllowed", f"{method} on {route.plural}/{name}")

    def _list(self, plural: str, items: list[Obj]) -> Obj:
        kind = KINDS[plural]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.group_version,
            "metadata": {"resourceVersion": self.api.store.resource_version},
            "items": items,
        }

    def _exec(self, route: Route, query: dict[str, list[str]]) -> None:
        pod = self.api.store.get("pods", route.namespace or "", str(route.name))
        if pod.get("status", {}).get("phase") != "Running":
            raise ApiError(400, "BadRequest", "container not found (pod is not running)")
        command = query.get("command", [])
        runner = self.api.cluster.exec_runner
        if runner is None:
            code, output = self.api.cluster.exec_handler(pod, command)
            exec_ws.serve(self, code, output)
        else:
            process = runner(pod, command, _flag(query, "tty"))
            exec_ws.stream(self, process, _flag(query, "stdin"))
        self.close_connection = True

    def _portforward(self, route: Route, query: dict[str, list[str]]) -> None:
        pod = self.api.store.get("pods", route.namespace or "", str(route.name))
        if pod.get("status", {}).get("phase") != "Running":
            raise ApiError(400, "BadRequest", "unable to forward: the pod is not running")
        ports = [int(p) for value in query.get("ports", []) for p in value.split(",") if p]
        if not ports:
            raise ApiError(400, "BadRequest", "at least one port must be given")
        portforward_ws.serve(self, ports)
        self.close_connection = True

    def _send(self, code: int, obj: Obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

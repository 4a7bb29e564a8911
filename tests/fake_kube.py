"""``FakeKubeApiServer``: a fake of the small part of the Kubernetes API the agent uses.

It is a fake because no real Kubernetes API server can run here (no container runtime,
no kubelet, no etcd-backed kube-apiserver binary in the package sources the tests may
install). It is kept faithful where the agent's behaviour depends on it, following the
API server's own behaviour:

* ``GET``/``PATCH /api/v1/nodes/{name}`` and ``/api/v1/nodes/{name}/status``: strategic
  merge patches (``application/strategic-merge-patch+json``) merge ``status.conditions``
  by their ``type`` key, honour ``{"$patch": "delete", "type": ...}`` and delete a field
  patched to null (``spec.unschedulable``); JSON merge patches
  (``application/merge-patch+json``) replace lists. A patch of the main resource keeps
  the status, a patch of ``/status`` keeps the spec, as the API server's strategies do.
* ``GET /api/v1/pods?fieldSelector=spec.nodeName=X``: a PodList of the node's pods;
  ``GET /api/v1/namespaces/{ns}/pods/{name}``.
* ``POST /api/v1/namespaces/{ns}/pods/{name}/eviction``: 201 with a Success Status; 429
  with the API server's exact Status body while a PodDisruptionBudget blocks the pod
  (:meth:`block` for N attempts or for ever); 404 for an unknown pod; 409 when the
  preconditions' uid is another pod's. An evicted pod gets a ``deletionTimestamp`` and
  disappears after :attr:`eviction_delay` seconds.
* ``POST /api/v1/namespaces/{ns}/events``: recorded in :attr:`events`.
* Every request needs ``Authorization: Bearer <token>`` (else 401), and is logged in
  :attr:`requests`.

Use it in a test's loop (``await start()``/``await stop()``) or, for tests that drive a
real agent process synchronously, in a thread of its own (:meth:`threaded`).
"""

from __future__ import annotations

__all__ = ["FakeKubeApiServer", "json_merge", "strategic_merge"]

import asyncio
import copy
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
_MERGE_KEYS = {("status", "conditions"): "type", ("status", "addresses"): "type"}


def json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Kubernetes strategic merge patch for the fields the agent patches.

    Lists with a merge key (``status.conditions`` by ``type``) merge element by element
    and honour ``$patch: delete``; other lists are replaced; null deletes a field.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        where = (*path, key)
        if value is None:
            result.pop(key, None)
        elif where in _MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_list(result.get(key) or [], value, _MERGE_KEYS[where])
        elif isinstance(value, dict):
            result[key] = strategic_merge(result.get(key), value, where)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    merged = [dict(item) for item in current]
    for item in patch:
        index = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def _json(body: Any, status: int = 200) -> web.Response:
    # Exactly the API server's content type: lightkube reads a Status only from it.
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 300 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return _json(body, code)


def _not_found(kind: str, name: str) -> web.Response:
    return _status(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)


class FakeKubeApiServer:
    """The fake API server (see the module docstring).

    Args:
        token: the bearer token requests must carry.
    """

    def __init__(self, *, token: str = "fake-token") -> None:  # noqa: S107 - a test token
        self.token = token
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str]] = []
        """(method, path with query, content type) of every request."""
        self.evictions: dict[str, int] = {}
        """Eviction requests per ``namespace/name``."""
        self.eviction_delay = 0.0
        self._blocked: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- state the tests set up and read ---------------------------------------------------

    def add_node(self, name: str, *, unschedulable: bool = False) -> None:
        """A Node with the kubelet's Ready condition."""
        spec: dict[str, Any] = {"unschedulable": True} if unschedulable else {}
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": _now(),
            "lastTransitionTime": _now(),
        }
        with self._lock:
            self.nodes[name] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
                "spec": spec,
                "status": {"conditions": [ready]},
            }

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        owner: str | None = "ReplicaSet",
        mirror: bool = False,
        emptydir: bool = False,
        phase: str = "Running",
    ) -> None:
        """A pod bound to ``node``; ``owner`` is its controller's kind (None: unmanaged)."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
        if owner is not None:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner,
                    "name": f"{name}-owner",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ]
        if mirror:
            meta["annotations"] = {"kubernetes.io/config.mirror": "0123456789abcdef"}
        volumes = [{"name": "scratch", "emptyDir": {}}] if emptydir else []
        with self._lock:
            self.pods[(namespace, name)] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}
                | ({"volumes": volumes} if volumes else {}),
                "status": {"phase": phase},
            }

    def block(self, namespace: str, name: str, times: int | None = None) -> None:
        """A PodDisruptionBudget refuses the pod's eviction ``times`` times (None: always)."""
        with self._lock:
            self._blocked[f"{namespace}/{name}"] = times

    def node(self, name: str) -> dict[str, Any]:
        """A copy of the Node as stored."""
        with self._lock:
            return copy.deepcopy(self.nodes[name])

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        """The Node's conditions by type."""
        return {c["type"]: c for c in self.node(name)["status"].get("conditions", [])}

    def pod_names(self) -> set[str]:
        """``namespace/name`` of every pod that still exists."""
        with self._lock:
            return {f"{ns}/{name}" for ns, name in self.pods}

    def recorded_events(self) -> list[dict[str, Any]]:
        """Copies of the Events created so far."""
        with self._lock:
            return copy.deepcopy(self.events)

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """A kubeconfig whose current context points at this server with the token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on a loopback port (ephemeral unless given)."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_get("/api/v1/nodes/{name}/status", self._get_node)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_patch("/api/v1/nodes/{name}/status", self._patch_node)
        app.router.add_get("/api/v1/pods", self._list_pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod)
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/eviction", self._evict)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._loop = asyncio.get_running_loop()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextmanager
    def threaded(self, port: int = 0) -> Iterator[FakeKubeApiServer]:
        """Run the server in a thread with its own event loop (for synchronous tests)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-kube", daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(self.start(port), loop).result(timeout=10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    async def restart(self) -> None:
        """Listen again on the same port (after :meth:`stop`)."""
        await self.start(self.port)

    # -- handlers ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self.requests.append(
                (request.method, request.path_qs, request.headers.get("Content-Type", ""))
            )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        with self._lock:
            node = self.nodes.get(name)
            if node is None:
                return _not_found("nodes", name)
            return _json(node)

    async def _patch_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = request.headers.get("Content-Type", "").split(";")[0]
        if kind not in (STRATEGIC, MERGE):
            return _status(415, "UnsupportedMediaType", f"the media type {kind!r} is not supported")
        try:
            patch = json.loads(await request.read())
        except ValueError as err:
            return _status(400, "BadRequest", f"invalid patch: {err}")
        if not isinstance(patch, dict):
            return _status(400, "BadRequest", "a patch must be a JSON object")
        with self._lock:
            node = self.nodes.get(name)
            if node is None:
                return _not_found("nodes", name)
            merged = strategic_merge(node, patch) if kind == STRATEGIC else json_merge(node, patch)
            if request.path.endswith("/status"):
                merged["spec"] = node["spec"]  # the status subresource writes only status
            else:
                merged["status"] = node["status"]
            version = int(node["metadata"]["resourceVersion"]) + 1
            merged["metadata"]["resourceVersion"] = str(version)
            self.nodes[name] = merged
            return _json(merged)

    async def _list_pods(self, request: web.Request) -> web.Response:
        selector = request.query.get("fieldSelector", "")
        node = selector.removeprefix("spec.nodeName=") if selector else None
        with self._lock:
            items = [
                pod
                for pod in self.pods.values()
                if node is None or pod["spec"].get("nodeName") == node
            ]
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": copy.deepcopy(items),
            }
        return _json(body)

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        with self._lock:
            pod = self.pods.get(key)
            if pod is None:
                return _not_found("pods", key[1])
            return _json(pod)

    async def _evict(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["ns"], request.match_info["name"]
        ref = f"{namespace}/{name}"
        body = json.loads(await request.read())
        with self._lock:
            self.evictions[ref] = self.evictions.get(ref, 0) + 1
            pod = self.pods.get((namespace, name))
            if pod is None:
                return _not_found("pods", name)
            wanted = ((body.get("deleteOptions") or {}).get("preconditions") or {}).get("uid")
            if wanted and wanted != pod["metadata"]["uid"]:
                return _status(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {wanted}, "
                    f"UID in object meta: {pod['metadata']['uid']}",
                )
            if ref in self._blocked:
                left = self._blocked[ref]
                if left is None or left > 0:
                    self._blocked[ref] = None if left is None else left - 1
                    return _status(
                        429,
                        "TooManyRequests",
                        PDB_MESSAGE,
                        causes=[
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {name}-pdb needs 1 healthy "
                                "pods and has 1 currently",
                            }
                        ],
                    )
            pod["metadata"].setdefault("deletionTimestamp", _now())
            uid = pod["metadata"]["uid"]
        if self.eviction_delay > 0:
            asyncio.get_running_loop().call_later(
                self.eviction_delay, self._remove, namespace, name, uid
            )
        else:
            self._remove(namespace, name, uid)
        return _status(201, "", "")

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is not None and pod["metadata"]["uid"] == uid:
                del self.pods[(namespace, name)]

    async def _create_event(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        if not isinstance(event, dict) or not event.get("involvedObject"):
            return _status(422, "Invalid", "Event is invalid: involvedObject: Required value")
        event.setdefault("metadata", {})["namespace"] = request.match_info["ns"]
        with self._lock:
            self.events.append(event)
        return _json(event, status=201)


def node_condition(conditions: Mapping[str, Mapping[str, Any]], type_: str) -> Mapping[str, Any]:
    """One condition by type (a readable KeyError when it is not there)."""
    if type_ not in conditions:
        raise KeyError(f"no condition {type_}; the node has {sorted(conditions)}")
    return conditions[type_]

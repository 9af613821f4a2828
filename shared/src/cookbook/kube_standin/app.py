"""The stand-in's HTTP API: the Kubernetes paths and JSON shapes the official client speaks.

Served paths (everything else is the apiserver's 404 `Status`):
  GET    /api/v1/nodes, /api/v1/nodes/{name}           PATCH /api/v1/nodes/{name}  (cordon)
  GET    /api/v1/pods, /api/v1/namespaces/{ns}/pods     ?fieldSelector= &labelSelector=
  GET    /api/v1/namespaces/{ns}/pods/{name}            DELETE ...  (grace period, preconditions)
  POST   /api/v1/namespaces/{ns}/pods/{name}/eviction   (policy/v1 Eviction)
  GET    /apis/policy/v1/poddisruptionbudgets, /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets
  GET    /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}             PATCH ...
Admin, for tests and demos (not Kubernetes):
  POST   /_admin/reset    wipe the cluster and its records, and seed it from the JSON body
  GET    /_admin/records  every eviction, delete and patch received, refused ones too

Every response carries `X-Stand-In: cookbook`, so no one mistakes it for a cluster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import RequestResponseEndpoint

from cookbook.kube_standin.cluster import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiError,
    Cluster,
    JSONObject,
    Kind,
    Seed,
    selects,
    valid_min_available,
)

STAND_IN_HEADER: Final = "X-Stand-In"
FieldSelector = Annotated[str | None, Query(alias="fieldSelector")]
LabelSelector = Annotated[str | None, Query(alias="labelSelector")]
MERGE_PATCHES: Final = ("application/merge-patch+json", "application/strategic-merge-patch+json")

# -- the admin API's cluster seed ------------------------------------------------------------

Name = Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN.pattern)]
Namespace = Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL.pattern)]
LabelValue = Annotated[
    str, StringConstraints(max_length=63, pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?$")
]
LabelKey = Annotated[
    str, StringConstraints(max_length=253, pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]*$")
]


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OwnerSeed(_Seed):
    kind: Literal["ReplicaSet", "StatefulSet", "DaemonSet", "Job"]
    name: Name


class PodSeed(_Seed):
    name: Name
    namespace: Namespace = "default"
    node: Name | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Running"
    owner: OwnerSeed | None = None


class PdbSeed(_Seed):
    name: Name
    namespace: Namespace = "default"
    selector: dict[LabelKey, LabelValue]  # matchLabels
    min_available: int | str

    @field_validator("min_available")
    @classmethod
    def _min_available(cls, value: int | str) -> int | str:
        if not valid_min_available(value):
            raise ValueError("must be a number >= 0 or a percentage such as '50%'")
        return value


class ClusterSeed(_Seed):
    """A whole cluster: `POST /_admin/reset` replaces everything with it."""

    nodes: list[Name] = Field(default_factory=list, max_length=1000)
    pods: list[PodSeed] = Field(default_factory=list, max_length=10_000)
    pdbs: list[PdbSeed] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSeed:
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("node names must be unique")
        for what, keys in (
            ("pod", [(p.namespace, p.name) for p in self.pods]),
            ("pdb", [(p.namespace, p.name) for p in self.pdbs]),
        ):
            if len(set(keys)) != len(keys):
                raise ValueError(f"{what} names must be unique within a namespace")
        for pod in self.pods:
            if pod.node is not None and pod.node not in self.nodes:
                raise ValueError(f"pod {pod.name} is on node {pod.node}, which is not in nodes")
            if pod.node is None and pod.phase != "Pending":
                raise ValueError(f"pod {pod.name} is {pod.phase} but on no node")
        return self

    def to_seed(self) -> Seed:
        return Seed(
            nodes=list(self.nodes),
            pods=[p.model_dump() for p in self.pods],
            pdbs=[p.model_dump() for p in self.pdbs],
        )


# -- selectors -------------------------------------------------------------------------------

type FieldGetter = Callable[[JSONObject], str]

_FIELDS: Final[dict[Kind, dict[str, FieldGetter]]] = {
    "Node": {
        "metadata.name": lambda o: str(o["metadata"]["name"]),
        "spec.unschedulable": lambda o: str(bool(o["spec"].get("unschedulable"))).lower(),
    },
    "Pod": {
        "metadata.name": lambda o: str(o["metadata"]["name"]),
        "metadata.namespace": lambda o: str(o["metadata"]["namespace"]),
        "spec.nodeName": lambda o: str(o["spec"].get("nodeName") or ""),
        "status.phase": lambda o: str(o["status"].get("phase", "")),
    },
    "PodDisruptionBudget": {
        "metadata.name": lambda o: str(o["metadata"]["name"]),
        "metadata.namespace": lambda o: str(o["metadata"]["namespace"]),
    },
}
_TERM: Final = re.compile(r"^\s*([^!=\s]+)\s*(==|!=|=)\s*([^\s,]*)\s*$")
_EXISTS: Final = re.compile(r"^\s*(!?)([^!=\s(),]+)\s*$")


def _field_filter(kind: Kind, selector: str | None) -> Callable[[JSONObject], bool]:
    fields = _FIELDS[kind]
    terms: list[tuple[FieldGetter, str, str]] = []
    for term in filter(str.strip, (selector or "").split(",")):
        match = _TERM.match(term)
        if match is None:
            raise ApiError.bad_request(f"invalid field selector: {term!r}")
        key, op, value = match.groups()
        if key not in fields:
            raise ApiError.bad_request(f'field label not supported: "{key}"')
        terms.append((fields[key], op, value))
    return lambda obj: all((get(obj) == value) == (op != "!=") for get, op, value in terms)


def _label_filter(selector: str | None) -> Callable[[JSONObject], bool]:
    """Equality-based label selectors (`a=b`, `a!=b`, `a`, `!a`); set-based ones are a 400."""
    match_labels: dict[str, str] = {}
    expressions: list[JSONObject] = []
    for term in filter(str.strip, (selector or "").split(",")):
        if equality := _TERM.match(term):
            key, op, value = equality.groups()
            if op == "!=":
                expressions.append({"key": key, "operator": "NotIn", "values": [value]})
            else:
                match_labels[key] = value
        elif existence := _EXISTS.match(term):
            negated, key = existence.groups()
            operator = "DoesNotExist" if negated else "Exists"
            expressions.append({"key": key, "operator": operator})
        else:
            raise ApiError.bad_request(
                f"unsupported label selector {term!r}: the cookbook's stand-in understands "
                "a=b, a!=b, a and !a"
            )
    parsed = {"matchLabels": match_labels, "matchExpressions": expressions}
    return lambda obj: selects(parsed, obj["metadata"].get("labels") or {})


# -- the app ---------------------------------------------------------------------------------


def _status(error: ApiError) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": error.message,
        "reason": error.reason,
        "details": error.details,
        "code": error.code,
    }
    return JSONResponse(body, error.code)


def _list(kind: Kind, items: list[JSONObject], version: str) -> JSONObject:
    api_version = "policy/v1" if kind == "PodDisruptionBudget" else "v1"
    # List items carry no kind/apiVersion of their own, as on a real apiserver.
    bare = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
    return {
        "kind": f"{kind}List",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": version},
        "items": bare,
    }


def _preconditions(delete_options: Any) -> JSONObject | None:
    if not isinstance(delete_options, dict):
        return None
    preconditions = delete_options.get("preconditions")
    return preconditions if isinstance(preconditions, dict) else None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError.bad_request(f"the request body is not valid JSON: {exc}") from None


def create_app(state_path: str | os.PathLike[str]) -> FastAPI:
    """The stand-in, keeping its cluster and records in the SQLite file at `state_path`."""
    cluster = Cluster(state_path)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        cluster.close()

    app = FastAPI(
        title="Kubernetes API stand-in (cookbook; not Kubernetes)",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.cluster = cluster

    @app.middleware("http")
    async def label(request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers[STAND_IN_HEADER] = "cookbook"
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _status(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            message = "the server does not allow this method on the requested resource"
            return _status(ApiError(405, "MethodNotAllowed", message))
        return _status(
            ApiError(404, "NotFound", "the server could not find the requested resource")
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k not in ("ctx", "input")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": jsonable_encoder(errors)}, 422)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    # -- nodes ---------------------------------------------------------------------------

    @app.get("/api/v1/nodes")
    async def list_nodes(
        field_selector: FieldSelector = None, label_selector: LabelSelector = None
    ) -> JSONObject:
        return _filtered("Node", None, field_selector, label_selector)

    @app.get("/api/v1/nodes/{name}")
    async def read_node(name: str) -> JSONObject:
        return cluster.get("Node", "", name)

    @app.patch("/api/v1/nodes/{name}")
    async def patch_node(name: str, request: Request) -> JSONObject:
        return cluster.patch("Node", "", name, await _merge_patch(request))

    # -- pods ----------------------------------------------------------------------------

    @app.get("/api/v1/pods")
    async def list_all_pods(
        field_selector: FieldSelector = None, label_selector: LabelSelector = None
    ) -> JSONObject:
        return _filtered("Pod", None, field_selector, label_selector)

    @app.get("/api/v1/namespaces/{namespace}/pods")
    async def list_pods(
        namespace: str, field_selector: FieldSelector = None, label_selector: LabelSelector = None
    ) -> JSONObject:
        return _filtered("Pod", namespace, field_selector, label_selector)

    @app.get("/api/v1/namespaces/{namespace}/pods/{name}")
    async def read_pod(namespace: str, name: str) -> JSONObject:
        return cluster.get("Pod", namespace, name)

    @app.delete("/api/v1/namespaces/{namespace}/pods/{name}")
    async def delete_pod(
        namespace: str,
        name: str,
        request: Request,
        grace_period_seconds: Annotated[int | None, Query(alias="gracePeriodSeconds")] = None,
    ) -> JSONResponse:
        options = await _json_body(request) or {}  # a DeleteOptions, if any
        if not isinstance(options, dict):
            raise ApiError.bad_request("the request body must be a DeleteOptions object")
        grace = options.get("gracePeriodSeconds", grace_period_seconds)
        if grace is not None and (not isinstance(grace, int) or grace < 0):
            raise ApiError.bad_request("gracePeriodSeconds must be a non-negative integer")
        outcome = cluster.delete_pod(namespace, name, grace, _preconditions(options))
        return JSONResponse(outcome.body, outcome.code)

    @app.post("/api/v1/namespaces/{namespace}/pods/{name}/eviction")
    async def evict_pod(
        namespace: str,
        name: str,
        request: Request,
        dry_run: Annotated[str | None, Query(alias="dryRun")] = None,
    ) -> JSONResponse:
        if dry_run is not None:
            raise ApiError.bad_request("dryRun is not supported by the cookbook's stand-in")
        eviction = await _json_body(request)
        if not isinstance(eviction, dict):
            raise ApiError.bad_request("the request body must be a policy/v1 Eviction")
        meta = eviction.get("metadata") or {}
        if meta.get("name", name) != name:
            raise ApiError.bad_request("name in URL does not match name in Eviction object")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        outcome = cluster.evict(namespace, name, _preconditions(eviction.get("deleteOptions")))
        return JSONResponse(outcome.body, outcome.code)

    # -- pod disruption budgets ------------------------------------------------------------

    @app.get("/apis/policy/v1/poddisruptionbudgets")
    async def list_all_pdbs(
        field_selector: FieldSelector = None, label_selector: LabelSelector = None
    ) -> JSONObject:
        return _filtered("PodDisruptionBudget", None, field_selector, label_selector)

    @app.get("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets")
    async def list_pdbs(
        namespace: str, field_selector: FieldSelector = None, label_selector: LabelSelector = None
    ) -> JSONObject:
        return _filtered("PodDisruptionBudget", namespace, field_selector, label_selector)

    @app.get("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}")
    async def read_pdb(namespace: str, name: str) -> JSONObject:
        return cluster.get("PodDisruptionBudget", namespace, name)

    @app.patch("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}")
    async def patch_pdb(namespace: str, name: str, request: Request) -> JSONObject:
        return cluster.patch("PodDisruptionBudget", namespace, name, await _merge_patch(request))

    # -- admin (not Kubernetes) ------------------------------------------------------------

    @app.post("/_admin/reset")
    async def reset(seed: ClusterSeed) -> dict[str, int]:
        cluster.reset(seed.to_seed())
        return {"nodes": len(seed.nodes), "pods": len(seed.pods), "pdbs": len(seed.pdbs)}

    @app.get("/_admin/records")
    async def records(verb: str | None = None, name: str | None = None) -> list[JSONObject]:
        return [
            asdict(r)
            for r in cluster.records()
            if verb in (None, r.verb) and name in (None, r.name)
        ]

    def _filtered(
        kind: Kind, namespace: str | None, fields: str | None, labels: str | None
    ) -> JSONObject:
        by_field, by_label = _field_filter(kind, fields), _label_filter(labels)
        items, version = cluster.list_all(kind, namespace)
        return _list(kind, [o for o in items if by_field(o) and by_label(o)], version)

    async def _merge_patch(request: Request) -> JSONObject:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in MERGE_PATCHES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the cookbook's stand-in accepts merge patches only ({', '.join(MERGE_PATCHES)}),"
                f" not {content_type or 'no content type'}",
            )
        patch = await _json_body(request)
        if not isinstance(patch, dict):
            raise ApiError.bad_request("a merge patch must be a JSON object")
        return patch

    return app

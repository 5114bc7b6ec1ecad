"""Each stage's contract, declared once: its operations, their routes, request and result
types, tensor specs and whether they stream.

The stage services' routes (`services.routes`), the one remote client
(`shared.pipeline.remote`) and the Hugging Face handlers (`shared.pipeline.hf`) are all
built from these declarations, so a new parameter is one field in one place: a scalar is
a field of the operation's `params` model (a query parameter on the wire, validated by
pydantic, shown in the OpenAPI schema), a tensor is a `tensor(...)` field of the request
or result dataclass (an `.npz` member on the wire).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, dataclass_transform

import numpy as np
from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput
from shared.families.base import FamilySpec
from shared.wire import TensorSpec

# An axis: a fixed size, None for any, or the name of a FamilySpec attribute.
Dim = int | str | None


@dataclass(frozen=True)
class Tensor:
    """One `.npz` member: dtype and shape; `fp16` lets float32 travel as float16."""

    dtype: str
    shape: tuple[Dim, ...]
    fp16: bool = False
    wire_name: str | None = None

    def spec(self, family: FamilySpec) -> TensorSpec:
        shape = tuple(getattr(family, d) if isinstance(d, str) else d for d in self.shape)
        return TensorSpec(self.dtype, shape, allow_fp16=self.fp16)


def tensor(
    dtype: str,
    shape: tuple[Dim, ...],
    *,
    fp16: bool = False,
    default: Any = dataclasses.MISSING,
    wire_name: str | None = None,
) -> Any:
    """A field of a `wire` dataclass that travels as an `.npz` member (`default=None`
    for an optional one)."""
    meta = {"tensor": Tensor(dtype, shape, fp16, wire_name)}
    return dataclasses.field(default=default, metadata=meta)


C = TypeVar("C")


@dataclass_transform(field_specifiers=(dataclasses.field, tensor))
def wire(cls: type[C] | None = None, *, frozen: bool = False) -> Any:
    """`dataclasses.dataclass`, telling type checkers that `tensor(...)` is a field."""
    if cls is None:
        return lambda c: dataclasses.dataclass(c, frozen=frozen)
    return dataclasses.dataclass(cls, frozen=frozen)


def tensor_fields(cls: type) -> dict[str, Tensor]:
    """The tensor fields of a request or result dataclass, by field name."""
    return {f.name: f.metadata["tensor"] for f in dataclasses.fields(cls) if "tensor" in f.metadata}


def wire_name(name: str, declared: Tensor) -> str:
    return declared.wire_name or name


def to_arrays(obj: Any) -> dict[str, np.ndarray]:
    """The tensor fields of `obj` as arrays by wire name (lists become arrays)."""
    arrays = {}
    for name, declared in tensor_fields(type(obj)).items():
        value = getattr(obj, name)
        if value is not None:
            arrays[wire_name(name, declared)] = np.asarray(value, dtype=declared.dtype)
    return arrays


def from_arrays(cls: type[T], arrays: Mapping[str, np.ndarray], **others: Any) -> T:
    """Build `cls` from decoded arrays; fields typed as lists get Python lists back."""
    values: dict[str, Any] = dict(others)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        declared = f.metadata.get("tensor")
        if declared is None:
            continue
        array = arrays.get(wire_name(f.name, declared))
        is_list = str(f.type).startswith("list[")
        values[f.name] = array.tolist() if is_list and array is not None else array
    return cls(**values)


def validated(model: type[P], data: Any, *, prefix: str = "") -> P:
    """pydantic validation outside FastAPI's own (parameters, JSON bodies), refusing bad
    input as InvalidInput (422) naming the field, `prefix` first."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = prefix + (".".join(str(p) for p in first["loc"]) or "body")
        raise InvalidInput(f"{param}: {first['msg']}", param=param) from None


T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)
Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(frozen=True)
class Route:
    """One HTTP route of an operation: its path and the request tensors it requires."""

    path: str
    summary: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation(Generic[Req, Res]):
    """One thing a stage does, e.g. the decoder's `decode`.

    `request` is a pydantic model (a JSON body) or a dataclass of `tensor` fields (an
    `.npz` body) with, when `params` is set, a `params` field of that model (query
    parameters). `result` is a dataclass of `tensor` fields plus `timing`. `params_defaults`
    gives the defaults that come from the deployment's settings (default steps...);
    `rows` says how many rows each result tensor has for a request.
    `headers` adds readable summary headers to an answer (X-Seeds...).
    """

    method: str
    request: type[Req]
    result: type[Res]
    routes: tuple[Route, ...]
    result_doc: str
    # How many rows the result of `request` has (checked on what a remote stage sends).
    rows: Callable[[Req], int]
    params: type[BaseModel] | None = None
    params_defaults: Callable[[Any], dict[str, Any]] | None = None
    streams: bool = False
    headers: Callable[[Res], dict[str, str]] | None = None

    @property
    def json_body(self) -> bool:
        return issubclass(self.request, BaseModel)

    def request_specs(self, route: Route, family: FamilySpec) -> dict[str, TensorSpec]:
        if self.json_body:
            return {}
        declared = tensor_fields(self.request)
        return {wire_name(m, declared[m]): declared[m].spec(family) for m in route.members}

    def result_specs(self, family: FamilySpec) -> dict[str, TensorSpec]:
        return {
            wire_name(name, declared): declared.spec(family)
            for name, declared in tensor_fields(self.result).items()
        }

    def route_for(self, request: Any) -> Route:
        """The route whose tensors are exactly those `request` carries."""
        if self.json_body:
            return self.routes[0]
        present = {n for n in tensor_fields(self.request) if getattr(request, n) is not None}
        for route in self.routes:
            if set(route.members) == present:
                return route
        raise InvalidInput(
            f"{self.method} takes one of {[r.members for r in self.routes]}; got {sorted(present)}"
        )


@dataclass(frozen=True)
class StageContract:
    """A stage: its name (as in settings, metrics and /v1/stages), label and operations."""

    name: str
    label: str
    operations: tuple[Operation[Any, Any], ...]

    def operation(self, method: str) -> Operation[Any, Any]:
        for op in self.operations:
            if op.method == method:
                return op
        raise KeyError(method)

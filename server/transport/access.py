"""Who may call each RPC: the `(loomwork.v1.access)` option on every rpc of the protos
(protos/loomwork/v1/access.proto), read from the descriptors, and the check of a caller's
roles against it (gRPC calls and what /mcp's tools do)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from loomwork.config import ADMIN_ROLE
from loomwork.errors import PermissionDenied
from protos.loomwork.v1 import (
    access_pb2,
    agent_pb2,
    integration_pb2,
    memory_pb2,
    rag_pb2,
    usage_pb2,
    workflow_pb2,
)

SERVICES: tuple[ServiceDescriptor, ...] = tuple(
    service
    for module in (memory_pb2, agent_pb2, rag_pb2, workflow_pb2, integration_pb2, usage_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)
# The role each access level needs; ACCESS_AUTHENTICATED needs none.
ROLE_OF: dict[int, str] = {access_pb2.ACCESS_ADMIN: ADMIN_ROLE}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its tenant, its roles there, and who it is (a JWT's `sub`,
    or `static token`)."""

    tenant: str
    roles: frozenset[str] = field(default_factory=frozenset)
    subject: str = ""


# The caller of the RPC (or /mcp request) being served, set once it is authenticated.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("loomwork_principal")


def rpc_path(method: MethodDescriptor) -> str:
    """The method's gRPC path, `/loomwork.v1.AgentService/CreateAgent`."""
    return f"/{method.containing_service.full_name}/{method.name}"


def all_methods() -> Iterator[MethodDescriptor]:
    """Every rpc of every Loomwork service."""
    for service in SERVICES:
        yield from service.methods


def access_of(method: MethodDescriptor) -> int:
    """The rpc's `(loomwork.v1.access)` option (ACCESS_UNSPECIFIED when it has none)."""
    extension: Any = access_pb2.access  # typed as a plain FieldDescriptor in the stubs
    return int(method.GetOptions().Extensions[extension])


class AccessRules:
    """The access level of every Loomwork rpc by gRPC path, read once from the protos."""

    def __init__(self) -> None:
        self.levels = {rpc_path(method): access_of(method) for method in all_methods()}

    def governs(self, path: str) -> bool:
        """Whether `path` is a Loomwork rpc (health and reflection are not)."""
        return path in self.levels

    def authorize(self, principal: Principal, path: str) -> None:
        """PermissionDenied unless `principal` may call the rpc at `path`; an rpc with no
        decision (or not Loomwork's) is refused for everyone."""
        level = self.levels.get(path, access_pb2.ACCESS_UNSPECIFIED)
        if level == access_pb2.ACCESS_AUTHENTICATED:
            return
        role = ROLE_OF.get(level)
        if role is None:
            raise PermissionDenied(f"{path} has no access rule: refused")
        if role not in principal.roles:
            has = ", ".join(sorted(principal.roles)) or "none"
            raise PermissionDenied(
                f"{path} needs role {role!r}; the caller's roles in tenant "
                f"{principal.tenant!r}: {has}"
            )


RULES = AccessRules()


S = TypeVar("S")


class _Guarded:
    """A servicer whose rpc methods first check the caller (`current_principal`)."""

    def __init__(self, servicer: object, service: ServiceDescriptor, rules: AccessRules) -> None:
        self._servicer = servicer
        self._service = service.full_name
        self._rules = rules

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._servicer, name)
        path = f"/{self._service}/{name}"
        if not self._rules.governs(path):
            return attribute
        rules = self._rules

        def checked(*args: Any, **kwargs: Any) -> Any:
            rules.authorize(current_principal.get(), path)
            return attribute(*args, **kwargs)

        return checked


def guarded(servicer: S, service: ServiceDescriptor, rules: AccessRules = RULES) -> S:
    """`servicer` (of `service`) with each rpc method called by a caller the rpc's access
    option admits, as on gRPC; other attributes pass through. For code that calls servicers
    outside gRPC (/mcp's tools)."""
    return cast(S, _Guarded(servicer, service, rules))

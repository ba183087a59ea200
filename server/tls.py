"""TLS of a Loomwork process, from its settings: the gRPC server's credentials (optionally
requiring client certificates), the HTTP endpoint's (same certificate), and the Temporal
client's (mTLS and/or an API key, as Temporal Cloud wants)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc
from temporalio.service import TLSConfig

from loomwork.config import Settings
from loomwork.errors import FailedPrecondition


def read_pem(path: Path, setting: str) -> bytes:
    """The PEM file a setting names; FailedPrecondition (naming the setting) if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FailedPrecondition(f"{setting} {path}: {error.strerror or error}") from error
    if b"-----BEGIN" not in data:
        raise FailedPrecondition(f"{setting} {path}: not a PEM file")
    return data


def _server_pair(settings: Settings) -> tuple[Path, Path] | None:
    """LOOMWORK_TLS_CERT and LOOMWORK_TLS_KEY, or None when TLS is off; one without the
    other (or a client CA without both) is FailedPrecondition."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        if settings.tls_client_ca is not None:
            raise FailedPrecondition(
                "LOOMWORK_TLS_CLIENT_CA needs LOOMWORK_TLS_CERT and LOOMWORK_TLS_KEY"
            )
        return None
    if cert is None or key is None:
        raise FailedPrecondition("set both LOOMWORK_TLS_CERT and LOOMWORK_TLS_KEY, or neither")
    return cert, key


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC server's TLS credentials (None: plaintext). With LOOMWORK_TLS_CLIENT_CA every
    caller must present a certificate that CA signed."""
    pair = _server_pair(settings)
    if pair is None:
        return None
    cert, key = pair
    client_ca = settings.tls_client_ca
    return grpc.ssl_server_credentials(
        [(read_pem(key, "LOOMWORK_TLS_KEY"), read_pem(cert, "LOOMWORK_TLS_CERT"))],
        root_certificates=read_pem(client_ca, "LOOMWORK_TLS_CLIENT_CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def http_ssl_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments serving HTTPS on the gRPC server's certificate (empty:
    plain HTTP). No client certificate is asked for: webhooks and OAuth callbacks come from
    third parties and browsers."""
    pair = _server_pair(settings)
    if pair is None:
        return {}
    cert, key = pair
    read_pem(cert, "LOOMWORK_TLS_CERT")  # a clear error before uvicorn's
    read_pem(key, "LOOMWORK_TLS_KEY")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_cert_reqs": ssl.CERT_NONE}


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """The Temporal client's `tls` argument: a TLSConfig when a TEMPORAL_TLS_* file or server
    name is set, else TEMPORAL_TLS (unset: on exactly when TEMPORAL_API_KEY is set)."""
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if (cert is None) != (key is None):
        raise FailedPrecondition("set both TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY, or neither")
    configured = cert or settings.temporal_tls_ca or settings.temporal_tls_server_name
    if settings.temporal_tls is False:
        if configured:
            raise FailedPrecondition("TEMPORAL_TLS=false, yet TEMPORAL_TLS_* files are set")
        return False
    if not configured:
        return bool(settings.temporal_tls or settings.temporal_api_key)
    ca = settings.temporal_tls_ca
    return TLSConfig(
        server_root_ca_cert=read_pem(ca, "TEMPORAL_TLS_CA") if ca else None,
        domain=settings.temporal_tls_server_name,
        client_cert=read_pem(cert, "TEMPORAL_TLS_CERT") if cert else None,
        client_private_key=read_pem(key, "TEMPORAL_TLS_KEY") if key else None,
    )

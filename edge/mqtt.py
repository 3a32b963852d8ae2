"""The service's broker login: username, password (from the environment) and TLS files.

Kept out of the venue file: the password is read from the variable ``mqtt.password_env``
names, so a venue folder can be copied or committed without a secret in it.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import aiomqtt

from edge.config import MqttConfig, Venue


def credentials(cfg: MqttConfig, venue: Venue) -> dict[str, Any]:
    """Keyword arguments for ``MqttNodeLink``: login and TLS, resolved against the venue."""
    out: dict[str, Any] = {}
    if cfg.username is not None:
        out["username"] = cfg.username
        if cfg.password_env is not None:
            password = os.environ.get(cfg.password_env)
            if not password:
                raise ValueError(
                    f"mqtt.password_env: environment variable {cfg.password_env} is empty"
                )
            out["password"] = password
    if cfg.tls is not None:
        tls = cfg.tls
        out["tls"] = aiomqtt.TLSParameters(
            ca_certs=str(venue.resolve(tls.ca)) if tls.ca else None,
            certfile=str(venue.resolve(tls.cert)) if tls.cert else None,
            keyfile=str(venue.resolve(tls.key)) if tls.key else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        out["tls_insecure"] = tls.insecure
    return out

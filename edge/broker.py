"""The embedded MQTT broker for a single-machine venue (``mqtt.mode = "embedded"``).

amqtt runs in this process's event loop. Its default listener binds 0.0.0.0:1883, so the bind
address is always passed explicitly: an edge box must not open a broker to the venue network
because a config key was left out. Production and the tests use Mosquitto (``mode = "external"``).
"""

from __future__ import annotations

import logging
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError

for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class EmbeddedBroker:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._broker: Broker | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    async def __aenter__(self) -> EmbeddedBroker:
        self._broker = Broker(self._config())
        try:
            await self._broker.start()
        except BrokerError as exc:  # amqtt wraps the OSError of a taken port
            self._broker = None
            cause = exc.__cause__
            raise OSError(
                getattr(cause, "errno", None),
                f"embedded MQTT broker on {self.host}:{self.port}: {cause or exc}",
            ) from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

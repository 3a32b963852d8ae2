"""Simulated MQTT sensors and gear (issue 4, part 2), written from docs/interfaces/mqtt.md and
the device pages: ``models`` (one per device type), ``dynamics`` (pure signal models), ``wire``
(the schema as a vendor implements it), ``node`` (connections, births, wills, commands) and
``family`` (the ``MqttFamily`` the runner builds, its devices and its one clock)."""

from simulators.gear.family import MqttFamily

__all__ = ["MqttFamily"]

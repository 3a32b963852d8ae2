"""Which family simulates which model, imported only when a venue uses it.

The model names are the profile names (docs/interfaces/devices/). Families are imported lazily,
one module per protocol, so a venue of hoists never imports the acoustic room (pyroomacoustics,
JACK) and a family that fails to import breaks only the venues that use it, with a message
naming the devices concerned instead of a traceback.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from simulators.core import DeviceSpec, Family, SimulationError

# Family name -> "module:Class". The family name is what the control endpoint reports.
FAMILIES: dict[str, str] = {
    "machinery": "simulators.machinery:MachineryFamily",
    "gear": "simulators.gear:MqttFamily",
    "lighting": "simulators.lighting:DmxFamily",
    "osc_matrix": "simulators.osc_matrix:OscFamily",
    "acoustics": "simulators.acoustics:RoomFamily",
}

MODELS: dict[str, str] = {
    **dict.fromkeys(
        [
            "hoist",
            "lineshaft_flybar",
            "chain_hoist",
            "stage_lift",
            "pit_lift",
            "turntable",
            "wagon",
            "curtain_track",
            "fire_curtain",
        ],
        "machinery",
    ),
    **dict.fromkeys(
        [
            "load_cell",
            "temp_humidity",
            "spl_meter",
            "people_counter",
            "power_meter",
            "wireless_mic_receiver",
            "power_amplifier",
            "projector",
            "media_server",
            "led_wall_processor",
            "shelly_3em",
            "shelly_ht",
        ],
        "gear",
    ),
    **dict.fromkeys(["led_par_rgbw", "moving_head", "dimmer_rack"], "lighting"),
    "dsp_matrix": "osc_matrix",
    "room": "acoustics",
}

FamilyFactory = Callable[[Mapping[str, Any]], Family]


def family_of(model: str) -> str:
    """The family name that simulates ``model``; SimulationError (without a location) if none."""
    try:
        return MODELS[model]
    except KeyError:
        raise SimulationError(
            f"model {model!r} is not simulated (known: {', '.join(sorted(MODELS))})"
        ) from None


def load_family(name: str) -> FamilyFactory:
    """Import the class of family ``name``; SimulationError if it cannot be imported."""
    module_name, _, class_name = FAMILIES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SimulationError(
            f"the {name} simulators ({FAMILIES[name]}) cannot be loaded: {exc}"
        ) from exc
    if not hasattr(module, class_name):
        raise SimulationError(
            f"the {name} simulators ({FAMILIES[name]}) cannot be loaded: no {class_name}"
        )
    return cast(FamilyFactory, getattr(module, class_name))


# --- load: what a device costs the process that simulates it ----------------------------------
#
# The runner splits a venue over processes by load, not by device count: one hoist polled at
# 5 Hz with a 20 Hz heartbeat costs what a dozen DMX fixtures cost. A family may state the cost
# of its devices itself (a ``weight(spec)`` function on its class: the fraction of one core one
# device takes); until it does, the weight is estimated from the spec with the per-event CPU
# costs below, measured on the reference machine by ``benchmarks/bench_simulators.py`` (they
# only need to be right relative to each other). The estimate imports nothing: a parent process
# partitions without loading the families.

MODBUS_REQUEST_S = 170e-6  # one request served by pymodbus and the drive's action hook
AXIS_STEP_S = 20e-6  # one axis, one physics step
PHYSICS_HZ = 100.0  # the machinery clock
READS_PER_POLL = 3.0  # status block, type extras, command/settings read-back
HEARTBEAT_HZ = 20.0  # the drive profile's heartbeat write
MQTT_MESSAGE_S = 200e-6  # one QoS 1 publish (paho encode, PUBACK handling)
MESSAGES_PER_PUBLISH = 4.0  # a gear device's points that go out on each publish tick
DMX_FRAME_S = 70e-6  # one universe's frame received, decoded and merged
DMX_FIXTURE_S = 100e-6  # one fixture's share of the lighting clock, per second
DMX_FRAME_HZ = 44.0  # the output engine's rate (docs/interfaces/dmx.md)
OSC_REQUEST_S = 60e-6  # one OSC query answered
OSC_POINTS = 33.0  # a loudspeaker matrix's points, queried on each poll
ROOM_LOAD = 0.5  # the acoustic room: a realtime convolution, half a core


def estimate_weight(spec: DeviceSpec) -> float:
    """The fraction of one core ``spec`` is expected to take, from its rates and its family."""
    family = MODELS.get(spec.model)
    if family == "machinery":
        beats = 0.0 if spec.model == "fire_curtain" else HEARTBEAT_HZ  # monitored only
        requests = spec.poll_hz * READS_PER_POLL + beats
        return PHYSICS_HZ * AXIS_STEP_S + requests * MODBUS_REQUEST_S
    if family == "gear":
        hz = _number(spec.simulate.get("publish_hz"), 1.0)
        return hz * MESSAGES_PER_PUBLISH * MQTT_MESSAGE_S
    if family == "lighting":
        return DMX_FIXTURE_S
    if family == "osc_matrix":
        return spec.poll_hz * OSC_POINTS * OSC_REQUEST_S
    if family == "acoustics":
        return ROOM_LOAD
    return 1e-3  # not simulated: the child reports the problem; any weight will do


def group_overhead(specs: Sequence[DeviceSpec]) -> float:
    """What a group costs beyond its devices: every DMX universe it receives at the frame rate."""
    universes = {s.transport.get("universe") for s in specs if s.transport.get("kind") == "dmx"}
    return len(universes) * DMX_FRAME_HZ * DMX_FRAME_S


def device_weight(spec: DeviceSpec) -> float:
    """``spec``'s weight: its family's own figure if the family states one, else the estimate.

    Asking imports the family (once; the parent of a multi-process run pays ~0.5 s for all of
    them); a family that cannot be imported gets the estimate, and its child reports why.
    """
    family = MODELS.get(spec.model)
    if family is not None:
        try:
            weight = getattr(load_family(family), "weight", None)
        except SimulationError:
            weight = None
        if callable(weight):
            value = weight(spec)
            if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
                return float(value)
    return estimate_weight(spec)


def _number(value: Any, default: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok and value > 0 else default

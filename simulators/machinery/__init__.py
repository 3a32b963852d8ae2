"""Modbus machinery simulators: nine axis types behind the documented machinery map.

Written from docs/interfaces/modbus-machinery.md and the machinery pages in
docs/interfaces/devices/ (hoist, lineshaft_flybar, chain_hoist, stage_lift, pit_lift,
turntable, wagon, curtain_track, fire_curtain); nothing here imports Flytower.

- ``physics``: pure motion generators (trapezoidal and jerk-limited runs, stops, rotary maths);
- ``registers``: addresses, bits and encodings of the map;
- ``drive``: the generic drive (state machine, brake, encoder, load, motor) and its registers;
- ``models``: each type's figures, extra registers and behaviour hooks;
- ``server``: Modbus TCP / RTU hosts (pymodbus ``SimDevice``) with communication faults;
- ``family``: ``MachineryFamily`` for the runner: specs -> devices, hosts, one physics clock;
  ``weight(spec)``, a device's expected load (fraction of a core) for partitioning;
- ``measure``: a load script (``python -m simulators.machinery.measure``), not imported.
"""

from simulators.machinery.family import MachineDevice, MachineryFamily, weight

__all__ = ["MachineDevice", "MachineryFamily", "weight"]

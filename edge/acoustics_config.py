"""``[acoustics]`` of the venue file: the sound field's device, zones, layouts, room and custom
modes (edge/acoustics.py runs it; docs/acoustics.md, "In the service").

Kept apart from ``edge/acoustics.py`` and importing ``dsp`` only inside its validators: every
process that loads a venue imports this module, and ``dsp.design`` pulls in scipy.signal and
scipy.optimize (about 2 s), which a venue without ``[acoustics]`` never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from dsp.engine import EngineConfig
    from dsp.layout import Layout
    from dsp.presets import Mode


ZoneName = str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZoneSettings(_Strict):
    """One zone of ``[acoustics]``: 1-based device channels, its layout (channels 1..outputs).

    For adaptation (``SoundFieldControl.adapt``) a zone also names, as 1-based device channels:
    ``pickup``, the one of its ``inputs`` that is the pickup microphone near the stage;
    ``listener``, the input of the reference (listener) microphone, which feeds no field; and
    ``source``, the output of the stage loudspeaker, which plays only for measurements."""

    name: ZoneName = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    inputs: list[int] = Field(min_length=1, max_length=64)
    outputs: list[int] = Field(min_length=1, max_length=64)
    layout: dict[str, Any]
    room: dict[str, Any] | None = None  # the natural room where this zone's listeners are
    mode: str | None = None  # recalled at start
    # 1-based device channels (strict: ``true`` is not channel 1)
    pickup: int | None = Field(default=None, strict=True)  # input: the pickup microphone
    listener: int | None = Field(default=None, strict=True)  # input: the listener microphone
    source: int | None = Field(default=None, strict=True)  # output: the stage loudspeaker

    @model_validator(mode="after")
    def _check(self) -> Self:
        for what, chans in (("inputs", self.inputs), ("outputs", self.outputs)):
            if any(not 1 <= c <= 512 for c in chans):
                raise ValueError(f"zone {self.name}: {what} are 1-based channels 1..512")
            if len(set(chans)) != len(chans):
                raise ValueError(f"zone {self.name}: a channel is named twice in {what}")
        self._check_paths()
        from dsp.design import DesignError, room_from
        from dsp.layout import LayoutError

        try:
            self.layout_obj()
        except LayoutError as exc:
            raise ValueError(f"zone {self.name}: layout: {exc}") from None
        if self.room is not None:
            try:
                room_from(self.room)
            except DesignError as exc:
                raise ValueError(f"zone {self.name}: {exc}") from None
        return self

    def _check_paths(self) -> None:
        for key in ("pickup", "listener", "source"):
            c = getattr(self, key)
            if c is not None and not 1 <= c <= 512:
                raise ValueError(f"zone {self.name}: {key} is a 1-based channel 1..512, got {c}")
        if self.pickup is not None and self.pickup not in self.inputs:
            raise ValueError(
                f"zone {self.name}: pickup {self.pickup} is not one of the zone's inputs "
                f"{self.inputs} (the pickup microphone feeds the field)"
            )
        if self.listener is not None:
            if self.listener == self.pickup:
                raise ValueError(
                    f"zone {self.name}: listener and pickup are the same channel "
                    f"{self.listener} (two microphones: one at the stage, one in the audience)"
                )
            if self.listener in self.inputs:
                raise ValueError(
                    f"zone {self.name}: listener {self.listener} is one of the zone's inputs "
                    "(the reference microphone must not feed the field)"
                )
        if self.source is not None and self.source in self.outputs:
            raise ValueError(
                f"zone {self.name}: source {self.source} is one of the zone's outputs (the stage "
                "loudspeaker plays the measurement's source, not the field)"
            )

    @property
    def adaptable(self) -> bool:
        """The zone names its pickup, listener and source: it can be adapted."""
        return None not in (self.pickup, self.listener, self.source)

    def device_inputs(self) -> list[int]:
        """Every device input the zone uses: ``inputs`` and the listener microphone."""
        return [*self.inputs, *([] if self.listener is None else [self.listener])]

    def device_outputs(self) -> list[int]:
        """Every device output the zone uses: ``outputs`` and the stage loudspeaker."""
        return [*self.outputs, *([] if self.source is None else [self.source])]

    def layout_obj(self) -> Layout:
        from dsp.layout import layout_from_dict

        return layout_from_dict({"n_out": len(self.outputs), **self.layout})


class OccupancyConfig(_Strict):
    """``[acoustics.occupancy]``: re-design the field as the audience comes and goes
    (edge/acoustics.py, ``SoundFieldControl.follow_occupancy``; docs/acoustics.md,
    "Occupancy"). The headcount is a device point's value (a ticketing gateway's or a people
    counter's, over MQTT or the REST API)."""

    point: str = Field(pattern=r"^[^/\s]+/[^/\s]+$")  # "device/point": the number of people
    fault_point: str | None = Field(default=None, pattern=r"^[^/\s]+/[^/\s]+$")
    """A point that is true while the counter cannot be believed (a blocked sensor)."""
    volume_m3: float = Field(gt=0, le=1e7, allow_inf_nan=False)
    absorption_m2: list[float] = Field(  # per band 125 Hz .. 4 kHz, each person over an empty seat
        default_factory=lambda: [0.10, 0.20, 0.30, 0.35, 0.35, 0.35], min_length=6, max_length=6
    )
    measured_people: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False)
    """How many people were in the hall when the configured room was measured (a measurement
    made by the service records the headcount of its own time)."""
    max_people: float = Field(default=100_000, gt=0, le=1e6, allow_inf_nan=False)
    """A headcount above this is not believed (a counter's fault): the field is left alone."""
    threshold: float = Field(default=0.025, gt=0, le=0.5, allow_inf_nan=False)
    """Re-design when a band's predicted T30 is this far (relative) from the playing field's
    room: 0.025 is half the JND of reverberation time (5 %)."""
    min_interval_s: float = Field(default=30.0, ge=0, le=86400, allow_inf_nan=False)
    """At most one re-design a zone in this time (a headcount ticking up as doors open)."""
    stale_s: float = Field(default=600.0, gt=0, le=86400, allow_inf_nan=False)
    """A headcount older than this is not used."""
    zones: list[ZoneName] = Field(default_factory=list, max_length=32)  # none given: every zone

    @model_validator(mode="after")
    def _absorption(self) -> Self:
        for hz, v in zip((125, 250, 500, 1000, 2000, 4000), self.absorption_m2, strict=True):
            if not (0 <= v <= 10):
                raise ValueError(f"absorption_m2 at {hz} Hz: 0 .. 10 m2 a person, got {v}")
        return self


class AcousticsConfig(_Strict):
    """``[acoustics]`` of the venue file (docs/interfaces/venue-file.md)."""

    device: str = Field(min_length=1)
    zones: list[ZoneSettings] = Field(min_length=1, max_length=32)
    modes: list[dict[str, Any]] = Field(default_factory=list, max_length=64)  # custom modes
    room: dict[str, Any] | None = None  # the natural room of zones without their own
    cap: float = Field(default=2.0, ge=1.0, le=10.0, allow_inf_nan=False)
    early_fade_s: float = Field(default=0.1, ge=0, le=60, allow_inf_nan=False)
    late_fade_s: float = Field(default=1.5, ge=0, le=60, allow_inf_nan=False)
    occupancy: OccupancyConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        from dsp.design import DesignError, room_from
        from dsp.presets import ModeError

        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ValueError(f"acoustics: zone names must be unique, got {names}")
        try:
            modes = self.all_modes()
        except ModeError as exc:
            raise ValueError(f"acoustics.modes: {exc}") from None
        if self.room is not None:
            try:
                room_from(self.room)
            except DesignError as exc:
                raise ValueError(f"acoustics: {exc}") from None
        if self.occupancy is not None:
            unknown = [z for z in self.occupancy.zones if z not in names]
            if unknown:
                raise ValueError(f"acoustics.occupancy.zones: no zone {unknown[0]!r} ({names})")
        for z in self.zones:
            if z.mode is not None and z.mode not in modes:
                raise ValueError(
                    f"zone {z.name}: no mode '{z.mode}' (modes: {', '.join(sorted(modes))})"
                )
        return self

    def all_modes(self) -> dict[str, Mode]:
        from dsp.presets import MODES, mode_from_dict

        out = dict(MODES)
        for data in self.modes:
            m = mode_from_dict(data)
            out[m.name] = m
        return out

    def engine_config(self) -> EngineConfig:
        from dsp.engine import EngineConfig, ZoneConfig

        return EngineConfig(
            zones=tuple(
                ZoneConfig(z.name, tuple(c - 1 for c in z.inputs), tuple(c - 1 for c in z.outputs))
                for z in self.zones
            ),
            early_fade_s=self.early_fade_s,
            late_fade_s=self.late_fade_s,
        )

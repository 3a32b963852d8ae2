"""Every query of every Grafana dashboard (dashboards/*.json) names only what the sink writes.

Grafana's InfluxDB data source runs InfluxQL, which VictoriaMetrics does not serve, so the
queries cannot be run in a test. Instead each one is parsed (the small InfluxQL subset the
dashboards use: SELECT fn("field") FROM measurement-or-/regex/ WHERE … GROUP BY … fill(…), and
SHOW TAG VALUES … WITH KEY = "tag") and its names are checked against the schema the sink
really produces: for every shipped profile, a reading of each point is encoded by
``edge.influx.LineEncoder`` and the measurement, tag keys, field keys and field types are read
back from the line. A point named in a query must exist in every measurement the query reads
(after its ``class`` filter); a measurement regex must list only real measurements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drivers.model import PROFILE_DIR, Reading, load_profile
from edge import influx

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


@dataclass
class Measurement:
    device_class: str
    points: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    fields: dict[str, str] = field(default_factory=dict)


def _field_type(text: str) -> str:
    if text.startswith('"'):
        return "string"
    return "integer" if text.endswith("i") else "float"


def _split_line(line: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(measurement, tags, {field: type}) of one line the encoder wrote (no escapes needed:
    profile ids, classes and point names are plain identifiers)."""
    series, fields, _ts = line.rsplit(" ", 2)
    measurement, *tags = series.split(",")
    tag_map = dict(t.split("=", 1) for t in tags)
    field_map = {k: _field_type(v) for k, v in (f.split("=", 1) for f in fields.split(","))}
    return measurement, tag_map, field_map


def written_schema() -> dict[str, Measurement]:
    profiles = [load_profile(p) for p in sorted(PROFILE_DIR.glob("*.toml"))]
    types = {f"dev-{p.id}": influx.profile_type(p) for p in profiles}
    enc = influx.LineEncoder("venue", "node", types, clock=lambda: 1.8e9)
    schema: dict[str, Measurement] = {}
    ts = 1.8e9 - 1
    for p in profiles:
        dev = f"dev-{p.id}"
        for n, point in enumerate(p.points):
            for k, value in enumerate((1.5, "text", None)):
                reading = Reading(dev, point, value, 0.0, ts + n * 0.01 + k * 0.001)
                ((_, line),) = enc.encode([reading])
                meas, tags, fields = _split_line(line.decode())
                m = schema.setdefault(meas, Measurement(tags["class"]))
                m.points.add(tags["point"])
                m.tags |= set(tags)
                for f, t in fields.items():
                    assert m.fields.setdefault(f, t) == t, f"{meas}.{f} changes type"
    return schema


SCHEMA = written_schema()
TAGS = set.union(*(m.tags for m in SCHEMA.values()))
FIELDS = {f: t for m in SCHEMA.values() for f, t in m.fields.items()}

_SELECT = re.compile(
    r"^\s*SELECT\s+(?P<select>.+?)\s+FROM\s+(?P<from>/(?:[^/\\]|\\.)*/|\"[^\"]+\")"
    r"(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+GROUP\s+BY\s+(?P<group>.+?))?"
    r"(?:\s+fill\((?P<fill>null|none|previous|linear|0)\))?\s*$",
    re.S,
)
_SHOW = re.compile(
    r"^\s*SHOW\s+TAG\s+VALUES(?:\s+FROM\s+(?P<from>/(?:[^/\\]|\\.)*/|\"[^\"]+\"))?"
    r"\s+WITH\s+KEY\s*=\s*\"(?P<key>\w+)\"(?:\s+WHERE\s+(?P<where>.+))?\s*$",
    re.S,
)
_ITEM = re.compile(
    r'^(?P<fn>mean|max|min|last|first|count|sum)\("(?P<field>\w+)"\)(\s+AS\s+"\w+")?$'
)
_COND = re.compile(
    r'^"(?P<key>\w+)"\s*(?P<op>=~|!~|!=|>=|<=|=|>|<)\s*'
    r"(?P<value>'[^']*'|/(?:[^/\\]|\\.)*/|-?\d+(\.\d+)?)$"
)
_VARIABLE = re.compile(r"^/\^\$\w+\$/$")  # a template variable: /^$device$/


class QueryError(AssertionError):
    pass


def _measurements(text: str) -> set[str]:
    if text.startswith('"'):
        name = text.strip('"')
        if name not in SCHEMA:
            raise QueryError(f"unknown measurement {name!r}")
        return {name}
    body = text[1:-1]
    if body == ".*":
        return set(SCHEMA)
    m = re.fullmatch(r"\^\(([\w|]+)\)\$", body)
    if m is None:
        raise QueryError(f"measurement regex {text} is not /^(a|b|…)$/ or /.*/")
    names = m.group(1).split("|")
    unknown = [n for n in names if n not in SCHEMA]
    if unknown:
        raise QueryError(f"unknown measurement(s) {unknown} in {text}")
    return set(names)


def _check_where(where: str | None, measurements: set[str]) -> None:
    if not where:
        return
    conds = [c.strip() for c in re.split(r"\s+AND\s+", where)]
    points: list[tuple[str, str]] = []
    for cond in conds:
        if cond == "$timeFilter":
            continue
        m = _COND.match(cond)
        if m is None:
            raise QueryError(f"cannot read condition {cond!r}")
        key, op, value = m.group("key"), m.group("op"), m.group("value")
        if key in FIELDS:
            if FIELDS[key] == "string" or value.startswith(("'", "/")):
                raise QueryError(f"field {key!r} compared with {value}")
        elif key not in TAGS:
            raise QueryError(f"{key!r} is neither a tag {sorted(TAGS)} nor a field")
        elif key == "class":
            if op != "=" or not value.startswith("'"):
                raise QueryError("filter class with = 'name'")
            cls = value.strip("'")
            measurements &= {n for n in measurements if SCHEMA[n].device_class == cls}
            if not measurements:
                raise QueryError(f"no measurement read by the query has class {cls!r}")
        elif key == "point":
            points.append((op, value))
        elif not (value.startswith("'") or _VARIABLE.match(value)):
            raise QueryError(f"{key} {op} {value}: expected a literal or a template variable")
    for op, value in points:
        for name in measurements:
            have = SCHEMA[name].points
            if op == "=":
                ok = value.strip("'") in have
            elif op == "=~":
                rx = re.compile(value[1:-1])
                ok = any(rx.search(p) for p in have)
            else:
                raise QueryError(f"point {op} is not used by the dashboards")
            if not ok:
                raise QueryError(f"measurement {name!r} has no point {value}")


def check_query(query: str) -> None:
    """Raise QueryError naming the first name the sink does not write."""
    show = _SHOW.match(query)
    if show is not None:
        if show.group("key") not in TAGS:
            raise QueryError(f"unknown tag key {show.group('key')!r}")
        measurements = _measurements(show.group("from")) if show.group("from") else set(SCHEMA)
        _check_where(show.group("where"), measurements)
        return
    m = _SELECT.match(query)
    if m is None:
        raise QueryError(f"cannot parse {query!r}")
    for item in (i.strip() for i in m.group("select").split(",")):
        sel = _ITEM.match(item)
        if sel is None:
            raise QueryError(f"cannot read select item {item!r}")
        fld, fn = sel.group("field"), sel.group("fn")
        if fld not in FIELDS:
            raise QueryError(f"unknown field {fld!r} (the sink writes {sorted(FIELDS)})")
        if FIELDS[fld] == "string" and fn not in ("last", "first", "count"):
            raise QueryError(f"{fn}() of the string field {fld!r}")
    measurements = _measurements(m.group("from"))
    _check_where(m.group("where"), measurements)
    for g in (g.strip() for g in (m.group("group") or "").split(",") if g.strip()):
        if g.startswith("time("):
            continue
        if g.strip('"') not in TAGS:
            raise QueryError(f"GROUP BY {g}: not a tag")


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def queries(board: dict[str, Any]) -> list[str]:
    out = [t["query"] for p in board["panels"] for t in p.get("targets", [])]
    return out + [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]


def test_the_schema_is_the_documented_one() -> None:
    assert set(influx.TAG_KEYS) == TAGS
    assert influx.FIELD_TYPES == FIELDS
    assert {"hoist", "spl_meter", "temp_humidity", "projector"} <= set(SCHEMA)


def test_the_five_dashboards_exist() -> None:
    names = {p.stem for p in dashboard_files()}
    assert names >= {"machinery", "lighting", "acoustics", "sensors", "alarms"}


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_is_importable_grafana_json(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"].startswith("flytower-") and board["title"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_INFLUXDB"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_INFLUXDB}"
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["rawQuery"] is True and t["refId"]


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in dashboard_files()]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_every_query_names_only_what_the_sink_writes(path: Path) -> None:
    board = json.loads(path.read_text())
    found = queries(board)
    assert found
    for q in found:
        check_query(q)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("""SELECT mean("value") FROM "hoist" WHERE "point" = 'positon' AND $timeFilter""",
         "no point"),
        ("""SELECT mean("value") FROM "hoists" WHERE $timeFilter""", "unknown measurement"),
        ("""SELECT mean("val") FROM "hoist" WHERE $timeFilter""", "unknown field"),
        ("""SELECT mean("value") FROM "hoist" WHERE "axis" = 'a' AND $timeFilter""",
         "neither a tag"),
        ("""SELECT mean("value") FROM /^(hoist|lift)$/ WHERE $timeFilter""", "unknown measurement"),
        ("""SELECT mean("value") FROM /^(hoist|spl_meter)$/ WHERE "point" = 'laf'""", "no point"),
        ("""SELECT mean("value") FROM "hoist" GROUP BY time(1m), "axis\"""", "not a tag"),
        ("""SELECT mean("text") FROM "hoist\"""", "string field"),
        ("""SELECT mean("value") FROM /.*/ WHERE "class" = 'hoists'""", "class"),
        ("""SHOW TAG VALUES FROM "hoist" WITH KEY = "axis\"""", "unknown tag key"),
    ],
)  # fmt: skip
def test_the_checker_catches_wrong_names(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        check_query(query)

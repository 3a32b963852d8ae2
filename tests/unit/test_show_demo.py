"""examples/show-demo.toml against the demo venue's catalogue (built from edge.config)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.show import ACTION_KINDS, Catalogue, ShowError, load_show, loads_show, parse_show
from controller.show.file import show_data
from edge.config import load_venue

REPO = Path(__file__).resolve().parents[2]
VENUE = REPO / "examples" / "venue-demo.toml"
DEMO = REPO / "examples" / "show-demo.toml"


def venue_catalogue(path: Path = VENUE) -> Catalogue:
    """The devices of the venue, with its [[groups]] labels as fixture groups."""
    venue = load_venue(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    groups: dict[str, list[str]] = {}
    for g in raw.get("groups", []):
        first = g.get("first", 1)
        groups[g["label"]] = [g["id"].format(n=first + i, i=i) for i in range(g["count"])]
    routed = {u for out in venue.config.dmx.outputs for u in out.universes}
    return Catalogue.from_devices(venue.devices, groups, universes=routed)


def test_the_demo_show_validates_against_the_demo_venue() -> None:
    cat = venue_catalogue()
    assert {"front pars", "movers"} <= set(cat.groups)
    show = load_show(DEMO, cat)
    assert show.show.venue == "demo"
    kinds = {a.kind for cl in show.lists for c in cl.cues for _, _, a in c.all_actions()}
    assert kinds == set(ACTION_KINDS)  # every action kind is exercised
    cues = [c for cl in show.lists for c in cl.cues]
    assert any(c.follow for c in cues)
    assert any(c.auto_continue_s for c in cues)
    assert any(c.parts for c in cues)
    assert {cl.mode.value for cl in show.lists} == {"tracking", "cue-only"}


def demo_data() -> dict[str, Any]:
    return copy.deepcopy(show_data(load_show(DEMO)))


def test_the_demo_show_refers_to_the_venue() -> None:
    data = demo_data()
    main = data["lists"][0]["cues"]
    main[2]["actions"][0]["axes"][0]["device"] = "hoist-7"
    main[4]["actions"][0]["args"]["clip"] = 0
    with pytest.raises(ShowError) as info:
        parse_show(data, DEMO, venue_catalogue())
    assert info.value.problems == [
        "lists[main].cues[2].actions[0].axes[0].device: no device 'hoist-7' in the venue",
        "lists[main].cues[3].actions[0]: device 'media-1': load_clip: clip 0 is below the "
        "minimum 1",
    ]


def test_a_venue_without_movers_rejects_the_demo_show(tmp_path: Path) -> None:
    cat = venue_catalogue()
    smaller = Catalogue(
        devices={k: v for k, v in cat.devices.items() if not k.startswith("spot-")},
        groups={k: v for k, v in cat.groups.items() if k != "movers"},
        universes=cat.universes,
    )
    with pytest.raises(ShowError) as info:
        load_show(DEMO, smaller)
    assert all("movers" in line for line in info.value.problems)
    assert len(info.value.problems) == 4  # one preset level, three part-cue levels


def test_the_example_in_the_format_document_is_valid() -> None:
    doc = (REPO / "docs" / "interfaces" / "show-file.md").read_text(encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    show = loads_show(example, "show-file.md", venue_catalogue())
    assert [c.label for c in show.lists[0].cues] == ["Warm, border in", "Video"]

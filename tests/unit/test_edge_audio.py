"""The cue engine's ``Audio`` port in the service (edge/audio.py), without a stream: paths that
leave the show's folder are refused before anything is sent, outputs are chosen by name or the
first audio output, and the sound field says it is not on this node yet. (Playing through a real
stream is tests/integration/test_audio_player_jack.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.journal import Origin, SourceKind
from controller.playback import PlaybackError
from edge.audio import PlayerLink, ServiceAudio, media_path

CUE = Origin(SourceKind.WAIT, "cue main/1")


@pytest.mark.parametrize(
    "file",
    [
        "../x.wav",
        "a/../../x.wav",
        "/etc/passwd",
        "\\\\server\\share\\x.wav",
        "C:\\x.wav",
        "a\\..\\..\\x.wav",
        "",
        "x\x00.wav",
    ],
)
def test_paths_leaving_the_show_folder_are_refused(tmp_path: Path, file: str) -> None:
    with pytest.raises(PlaybackError, match="show's folder"):
        media_path(tmp_path, file)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    media = tmp_path / "show"
    media.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"")
    (media / "link.wav").symlink_to(tmp_path / "secret.wav")
    with pytest.raises(PlaybackError, match="leads outside"):
        media_path(media, "link.wav")
    assert media_path(media, "sounds/a b.wav") == (media / "sounds" / "a b.wav").resolve()


@given(st.text(min_size=1, max_size=60))
def test_any_name_resolves_inside_or_is_refused(name: str) -> None:
    root = Path("/srv/show")
    try:
        path = media_path(root, name)
    except PlaybackError:
        return
    assert path.is_relative_to(root.resolve())


async def test_outputs_by_name_or_the_first(tmp_path: Path) -> None:
    a, b = PlayerLink("a"), PlayerLink("b")
    audio = ServiceAudio({"hoist": object(), "a": a, "b": b}, media_dir=tmp_path)
    assert audio.output(None) is a
    assert audio.output("b") is b
    with pytest.raises(PlaybackError, match=r"no audio output 'c' \(audio outputs: a, b\)") as e:
        audio.output("c")
    assert e.value.status == 422
    with pytest.raises(PlaybackError, match="no audio output device on this node"):
        ServiceAudio({}, media_dir=tmp_path).output(None)


async def test_play_on_a_stream_that_is_not_running(tmp_path: Path) -> None:
    link = PlayerLink("fx")
    audio = ServiceAudio({"fx": link}, media_dir=lambda: tmp_path)
    with pytest.raises(PlaybackError, match="'fx' is not running"):
        await audio.play("x.wav", 0.0, False, None, 0.0, CUE)
    assert link.playing == []
    with pytest.raises(PlaybackError, match="show's folder"):
        await audio.play("../x.wav", 0.0, False, None, 0.0, CUE)


async def test_soundfield_needs_acoustics_on_this_node(tmp_path: Path) -> None:
    audio = ServiceAudio({}, media_dir=tmp_path)
    with pytest.raises(PlaybackError, match=r"no sound-field engine on this node \(\[acoustics\]"):
        await audio.soundfield("concert", 2.0, CUE)

    class Engine:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float]] = []

        async def recall(self, mode: str, fade_s: float, origin: Origin) -> None:
            self.calls.append((mode, fade_s))

    engine = Engine()
    await ServiceAudio({}, tmp_path, soundfield=engine).soundfield("opera", 3.0, CUE)
    assert engine.calls == [("opera", 3.0)]


async def test_the_services_audio_devices_are_outputs(tmp_path: Path) -> None:
    """``ServiceAudio`` over the service's ``drivers`` mapping: its ``AudioDevice`` entries are
    the outputs (constructing one starts nothing: the stream opens in ``run``)."""
    from drivers.model import PROFILE_DIR, AudioTransport, Device, load_profile
    from edge.audio import AudioDevice

    async def sink(batch: object) -> None:
        return None

    profile = load_profile(PROFILE_DIR / "audio_interface.toml")
    dev = Device("fx", profile, AudioTransport(kind="audio", device="JACK"), 1.0)
    audio_dev = AudioDevice(dev, sink, lambda health: None)
    audio = ServiceAudio({"hoist": object(), "fx": audio_dev}, media_dir=tmp_path)
    assert audio.output(None) is audio_dev.player
    assert audio.output("fx").driver is audio_dev.driver

"""Evaluation videos: frame layout, nearest-neighbour enlargement, H.264 MP4 writing (atomic)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pixel_ddpg.errors import UserError
from pixel_ddpg.video import BACKGROUND, MARGIN, TILE_PADDING, VideoWriter, compose_frame, default_scale

RNG = np.random.default_rng(0)


def _obs(c: int = 9, size: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (c, size, size), dtype=np.uint8)


def _render(size: int = 256) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def test_writes_h264_mp4_of_composed_frames(tmp_path: Path) -> None:
    path = tmp_path / "ep.mp4"
    frames = [compose_frame(_obs(9, 16), _render(64), i, 0.5 * i) for i in range(12)]
    with VideoWriter(path, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    decoded = _decode(path)
    assert len(decoded) == 12
    assert decoded[0].shape == frames[0].shape
    assert [p.name for p in tmp_path.iterdir()] == ["ep.mp4"]  # no temp file left beside it
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 10


def test_odd_frames_are_padded_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path) as writer:
        for frame in _frames(3, h=33, w=45):
            writer.write(frame)
    assert _decode(path)[0].shape == (34, 46, 3)


def test_exception_inside_with_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "ep.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path) as writer:
            for frame in _frames(5):
                writer.write(frame)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_exit_protocol_as_evaluate_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ep.mp4"  # a missing folder is created
    writer = VideoWriter(path, fps=30).__enter__()
    for frame in _frames(4):
        writer.write(frame)
    writer.__exit__(None, None, None)
    assert len(_decode(path)) == 4


def test_frame_size_change_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the video is 48x64"):
        with VideoWriter(tmp_path / "ep.mp4") as writer:
            writer.write(_frames(1)[0])
            writer.write(_frames(1, h=32)[0])
    assert list(tmp_path.iterdir()) == []


def test_no_frames_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "ep.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_is_a_one_line_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="not writable") as info:
        VideoWriter(blocker / "ep.mp4")
    assert "\n" not in str(info.value)


def test_compose_frame_pixels_layout() -> None:
    obs, render = _obs(9, 64), _render(256)
    frame = compose_frame(obs, render, 7, 12.5)
    assert frame.dtype == np.uint8
    assert frame.shape == (264, 660, 3)  # render 256 + margins; three 128-px tiles + padding beside it
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    # the render sits unchanged at the top left
    assert np.array_equal(frame[MARGIN:MARGIN + 256, MARGIN:MARGIN + 256], render)
    # stable: the layout depends on shapes only, not on the numbers drawn
    other = compose_frame(obs, render, 123456, -9999.25)
    assert other.shape == frame.shape
    assert not np.array_equal(other, frame)  # but the text differs
    # text drawn below the agent view, in the right column
    text_area = frame[MARGIN + 2 * TILE_PADDING + 128:, 2 * MARGIN + 256:]
    assert (text_area != BACKGROUND).any()


def test_compose_frame_state_obs_is_render_plus_text() -> None:
    render = np.full((256, 256, 3), 200, dtype=np.uint8)
    frame = compose_frame(None, render, 0, 0.0)
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    assert frame.shape[0] == 256 + 2 * MARGIN
    assert np.array_equal(frame[MARGIN:MARGIN + 256, MARGIN:MARGIN + 256], render)
    assert (frame[:, 2 * MARGIN + 256:] != BACKGROUND).any()  # some text was drawn beside it
    assert compose_frame(None, render, 99999, -1e4).shape == frame.shape


def test_compose_frame_without_render_and_bad_inputs() -> None:
    frame = compose_frame(_obs(3, 84), None, 1, 2.0)
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    assert frame.shape[0] > 2 * 84  # enlarged x2 by default
    with pytest.raises(ValueError, match="multiple of 3"):
        compose_frame(_obs(4, 8), None, 0, 0.0)
    with pytest.raises(ValueError, match="uint8"):
        compose_frame(_obs(9, 8).astype(np.float32), None, 0, 0.0)
    with pytest.raises(ValueError, match="needs"):
        compose_frame(None, None, 0, 0.0)


def test_default_scale() -> None:
    assert default_scale(64, 256) == 2
    assert default_scale(84, 256) == 2
    assert default_scale(16, 64) == 2
    assert default_scale(64, 64) == 1
    assert default_scale(64, None) == 2


def test_enlargement_is_nearest_neighbour() -> None:
    obs = _obs(6, 8)
    render = np.zeros((16, 16, 3), dtype=np.uint8)
    s = 4
    frame = compose_frame(obs, render, 0, 0.0, scale=s)
    y0 = MARGIN + TILE_PADDING
    x0 = MARGIN + 16 + MARGIN + TILE_PADDING  # right of the render, inside make_grid's padding
    for k in range(2):  # both stacked frames, oldest first, side by side
        left = x0 + k * (8 * s + TILE_PADDING)
        for i in range(8):
            for j in range(8):
                block = frame[y0 + i * s:y0 + (i + 1) * s, left + j * s:left + (j + 1) * s]
                assert (block == obs[3 * k:3 * k + 3, i, j]).all(), (k, i, j)
        # the same view, built by repeating pixels: nearest-neighbour, no smoothing
        view = frame[y0:y0 + 8 * s, left:left + 8 * s]
        expected = obs[3 * k:3 * k + 3].transpose(1, 2, 0).repeat(s, axis=0).repeat(s, axis=1)
        assert np.array_equal(view, expected)

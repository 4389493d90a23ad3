"""Episode videos: what the agent saw beside a larger render, written as a browser-playable MP4.

Why both views: the agent's 64x64 (or 84x84) stack is what the policy acts on, so seeing it,
enlarged without smoothing, shows what the policy could and could not see; the larger render
from the same camera shows what happened. The evaluate command builds one frame per agent step
with :func:`compose_frame` and writes them with :class:`VideoWriter`.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from pixel_ddpg.errors import UserError
from pixel_ddpg.rundir import commit, temporary_name

MARGIN = 4  # pixels around and between the panels
TILE_PADDING = 2  # between the agent's frames (torchvision make_grid padding)
FONT_SIZE = 14
LINE_HEIGHT = 18  # one line of text plus spacing
TEXT_LINES = 2
MIN_TEXT_WIDTH = 260  # room for "frame 100000   return -12345.6" whatever the obs
BACKGROUND = 24
TILE_PAD_VALUE = 96
TEXT_COLOR = (255, 255, 255)
CODECS = ("libx264", "h264")  # PyAV's wheels bundle libx264; "h264" maps to it there


def _even(n: int) -> int:
    return n + (n % 2)


def _check_uint8(name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d uint8 array; got {array.ndim}-d {array.dtype} of shape {array.shape}")
    return array


def default_scale(obs_size: int, render_size: int | None) -> int:
    """Integer enlargement so each of the agent's frames is about half the render's height
    (or about 128 px without a render): big enough to see pixels, small beside the render."""
    target = render_size / 2 if render_size else 128
    return max(1, round(target / obs_size))


def agent_view(obs: np.ndarray, scale: int) -> np.ndarray:
    """The observation's RGB frames (oldest first) tiled side by side, each enlarged ``scale``
    times with nearest-neighbour so every agent pixel stays a sharp ``scale``x``scale`` block."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import make_grid

    obs = _check_uint8("obs", obs, 3)
    c, h, w = obs.shape
    if c == 0 or c % 3:
        raise ValueError(f"obs must hold whole RGB frames (C a multiple of 3, CHW layout); got shape {obs.shape}")
    frames = torch.from_numpy(np.ascontiguousarray(obs)).reshape(c // 3, 3, h, w)
    if scale != 1:
        frames = F.resize(frames, [h * scale, w * scale], interpolation=InterpolationMode.NEAREST, antialias=False)
    grid = make_grid(frames, nrow=c // 3, padding=TILE_PADDING, pad_value=TILE_PAD_VALUE)
    return grid.permute(1, 2, 0).contiguous().numpy()


@functools.lru_cache(maxsize=1)
def _font():  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    from PIL import features

    # The default font: scalable (Aileron) when Pillow has FreeType, else its small bitmap font.
    return ImageFont.load_default(size=FONT_SIZE) if features.check("freetype2") else ImageFont.load_default()


def compose_frame(
    obs: np.ndarray | None,
    render: np.ndarray | None,
    frame_index: int,
    episode_return: float,
    scale: int | None = None,
) -> np.ndarray:
    """One video frame (H, W, 3) uint8: the render on the left; on the right the agent's frames
    side by side (enlarged ``scale`` times, nearest) above the frame number and running return.

    ``obs`` is one (C, H, W) uint8 pixel observation, or None for state observations; ``render``
    is (S, S, 3) uint8 or None. The size depends only on the input shapes and ``scale``, never on
    the text, and is even in both dimensions as H.264 with yuv420p requires.
    """
    from PIL import Image, ImageDraw

    if render is not None:
        render = _check_uint8("render", render, 3)
        if render.shape[2] != 3:
            raise ValueError(f"render must be (H, W, 3) RGB; got shape {render.shape}")
    if obs is None and render is None:
        raise ValueError("compose_frame needs a pixel observation, a render, or both")
    strip = None
    if obs is not None:
        obs = np.asarray(obs)
        if scale is None:
            scale = default_scale(obs.shape[-2], None if render is None else render.shape[0])
        if scale < 1:
            raise ValueError(f"scale must be a positive integer; got {scale}")
        strip = agent_view(obs, scale)

    render_h, render_w = (0, 0) if render is None else render.shape[:2]
    strip_h, strip_w = (0, 0) if strip is None else strip.shape[:2]
    text_h = TEXT_LINES * LINE_HEIGHT
    column_x = MARGIN + (render_w + MARGIN if render is not None else 0)
    column_w = max(strip_w, MIN_TEXT_WIDTH)
    text_y = MARGIN + (strip_h + MARGIN if strip is not None else 0)
    height = _even(max(render_h, text_y - MARGIN + text_h) + 2 * MARGIN)
    width = _even(column_x + column_w + MARGIN)

    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    if render is not None:
        canvas[MARGIN : MARGIN + render_h, MARGIN : MARGIN + render_w] = render
    if strip is not None:
        canvas[MARGIN : MARGIN + strip_h, column_x : column_x + strip_w] = strip

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if obs is not None:
        c, h, w = obs.shape
        view = f"agent view: {c // 3} x {h}x{w}, x{scale}"
    else:
        view = "agent view: state"
    draw.text((column_x, text_y), view, fill=TEXT_COLOR, font=_font())
    draw.text(
        (column_x, text_y + LINE_HEIGHT),
        f"frame {frame_index}   return {episode_return:.1f}",
        fill=TEXT_COLOR,
        font=_font(),
    )
    return np.asarray(image)


def _pick_codec() -> str:
    import av

    for name in CODECS:
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")
            except (ValueError, av.FFmpegError):
                continue
            return name
    raise UserError(f"this PyAV build has no H.264 encoder (tried {', '.join(CODECS)}); reinstall the `av` wheel")


class VideoWriter:
    """Write RGB frames to an H.264 MP4 (yuv420p, faststart: plays in a browser).

    Atomic: frames go to a hidden temp file beside ``path``, renamed onto ``path`` only when
    the ``with`` block ends without an exception; otherwise the temp file is removed, so a
    crash never leaves a half-written video that looks like a real one.
    """

    def __init__(self, path: str | os.PathLike[str], fps: int = 30, crf: int = 23) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.tmp_path = temporary_name(self.path)
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._check_folder()

    def _check_folder(self) -> None:
        """Fail before any episode is run if the video could not be saved."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write the video {self.path}: folder {folder} is not writable ({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write the video {self.path}: folder {folder} is not writable")

    def __enter__(self) -> VideoWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temp file; a folder that cannot be written is a :class:`UserError`."""
        import av

        codec = _pick_codec()
        try:
            self._container = av.open(
                str(self.tmp_path), "w", format="mp4", options={"movflags": "faststart"}
            )
        except OSError as exc:  # av.error.PermissionError and friends are OSErrors too
            raise UserError(f"cannot write the video {self.path}: folder {self.path.parent} is not writable ({exc})") from None
        self._stream = self._container.add_stream(codec, rate=Fraction(self.fps))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf)}

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame; every frame must have the first one's size."""
        import av

        if self._container is None:
            raise RuntimeError("VideoWriter.write() before open(); use it as a context manager")
        frame = _check_uint8("frame", frame, 3)
        if frame.shape[2] != 3:
            raise ValueError(f"frame must be (H, W, 3) RGB; got shape {frame.shape}")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sizes; pad rather than refuse
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            h, w = frame.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self._stream.height, self._stream.width = h, w
        elif (h, w) != self._size:
            raise ValueError(f"frame {self.frames_written} is {h}x{w}; the video is {self._size[0]}x{self._size[1]}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file onto ``path``; returns ``path``."""
        if self._container is None:
            raise RuntimeError("VideoWriter.close() without an open video")
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}; nothing saved")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            commit(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial video: close the container and delete the temp file."""
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (OSError, ValueError, RuntimeError):
                pass  # the file is being deleted; its trailer does not matter
        self.tmp_path.unlink(missing_ok=True)

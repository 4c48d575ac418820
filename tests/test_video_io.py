"""Video in and out through PyAV: AV1 LeRobot datasets converted frame-accurately, H.264 yuv420p MP4s written, clear
errors for unsupported or corrupt files, evaluation videos in TensorBoard, and robomimic files without control_freq."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import test_convert_lerobot as lerobot_layout
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.datasets.video_io import VideoReader, read_frames, write_mp4
from calql_robot.errors import UserError
from calql_robot.training.logger import MetricsLogger

REPO = Path(__file__).resolve().parent.parent
# solid colours far apart (>= 127 in some channel): a frame decoded one step off cannot pass for the right one
PALETTE = np.array([(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)][1:], np.uint8)
LOSSY = 24  # max per-channel error of a decoded solid colour


@pytest.fixture(autouse=True)
def _quiet_svt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVT_LOG", "1")  # SVT-AV1 prints its configuration to stderr unless told errors only


def encode(path: Path, frames: list[np.ndarray], codec: str, fps: int = lerobot_layout.FPS, gop: int = 2) -> None:
    """Encode RGB frames with PyAV (``libsvtav1`` writes AV1, LeRobot v3.0's default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def write_av1_levels(path: Path, levels: list[int]) -> None:
    """Stands in for the LeRobot layout's video writer: frame g is the solid colour PALETTE[g], AV1-encoded."""
    encode(path, [np.broadcast_to(PALETTE[g], (32, 32, 3)).copy() for g in levels], "libsvtav1")


def bit_frames(n: int) -> list[np.ndarray]:
    """Frame i shows i in binary: 8 columns 8 px wide, white for a 1 bit (survives lossy coding exactly)."""
    bits = (np.arange(n)[:, None] >> np.arange(8)[None, :]) & 1
    return [np.repeat(np.repeat(b * 255, 8)[None, :, None], 32, axis=0).repeat(3, axis=2).astype(np.uint8)
            for b in bits]


def bit_index(frames: np.ndarray) -> list[int]:
    bits = frames[:, :, :, 0].reshape(frames.shape[0], 32, 8, 8).mean(axis=(1, 3)) > 128
    return [int(np.sum(b * (1 << np.arange(8)))) for b in bits]


@pytest.fixture()
def av1_lerobot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[list[int]]]:
    monkeypatch.setattr(lerobot_layout, "write_mp4", write_av1_levels)
    src = tmp_path / "ds"
    return src, lerobot_layout.write_v3(src, lerobot_layout.episode_truth())


def test_av1_lerobot_dataset_converts_frame_accurately(av1_lerobot, tmp_path):
    src, levels = av1_lerobot
    with VideoReader(src / "videos" / lerobot_layout.FRONT / "chunk-000" / "file-000.mp4") as reader:
        assert reader.codec == "av1" and reader.n_frames == 12 and reader.fps == lerobot_layout.FPS
    out = tmp_path / "o.zarr"
    proc = subprocess.run([sys.executable, "-m", "calql_robot.convert", "source=lerobot", f"input={src}",
                           f"output={out}", "keys.cameras={front:front_rgb,wrist:wrist_rgb}", "image_size=16"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ds = ZarrDataset(out)
    for i, n in enumerate(lerobot_layout.LENGTHS):
        front = ds.episode(i)["obs"]["front_rgb"].astype(int)
        assert front.shape == (n, 16, 16, 3)
        expected = PALETTE[levels[i]].astype(int)[:, None, None, :]
        assert np.abs(front - expected).max() <= LOSSY, f"episode {i}: frames differ from their colours"


def test_unsupported_codec_in_a_dataset_names_file_and_codec(av1_lerobot, tmp_path):
    src, _ = av1_lerobot
    video = src / "videos" / lerobot_layout.FRONT / "chunk-000" / "file-001.mp4"
    data = video.read_bytes()
    assert data.count(b"av01") >= 1
    video.write_bytes(data.replace(b"av01", b"zzzz"))  # a sample entry FFmpeg knows no decoder for
    with pytest.raises(UserError, match=r"^episode 2: video .*file-001\.mp4: codec tag 'zzzz' has no decoder"):
        run_conversion(load_config(["source=lerobot", f"input={src}", f"output={tmp_path / 'o.zarr'}"]))
    assert not (tmp_path / "o.zarr").exists()


def test_reader_seeks_by_time_and_counts_by_ordinal(tmp_path):
    path = tmp_path / "gop.mp4"
    encode(path, bit_frames(90), "libsvtav1", fps=30, gop=30)  # key frames every second: seeking has work to do
    with VideoReader(path) as reader:
        assert (reader.n_frames, reader.width, reader.height, reader.codec) == (90, 64, 32, "av1")
        for wanted in ([75, 76], [15], [30, 31, 31, 59], [89], [0]):  # forward, back, across key frames
            assert bit_index(reader.read_times(np.array(wanted) / 30.0)) == wanted
        assert bit_index(reader.read([3, 3, 40])) == [3, 3, 40]
        assert bit_index(reader.read_times([2.0 + 1 / 300])) == [60]  # within half a frame
        with pytest.raises(UserError, match=r"gop\.mp4: frame 90 cannot be decoded at t=3 s: no frame within"):
            reader.read_times([3.0])
        with pytest.raises(UserError, match=r"gop\.mp4: frame 95 cannot be decoded \(the file holds 90 readable"):
            reader.read([95])
    assert bit_index(read_frames(path, timestamps=[1.5])) == [45]


def test_write_mp4_is_h264_yuv420p_with_even_sides(tmp_path):
    frames = [np.broadcast_to(PALETTE[i], (21, 33, 3)).copy() for i in range(6)]
    path = write_mp4(frames, tmp_path / "out" / "episode.mp4", fps=12.5)
    assert path == tmp_path / "out" / "episode.mp4" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec.canonical_name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (34, 22)  # padded by one column / row
        assert stream.average_rate == 12.5
        decoded = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(stream)]
    assert len(decoded) == 6
    for i, frame in enumerate(decoded):
        assert np.abs(frame - PALETTE[i].astype(int)).max() <= LOSSY
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # index first: browsers start playing before the whole file loads
    assert write_mp4([], tmp_path / "none.mp4") is None and not (tmp_path / "none.mp4").exists()


def test_bad_video_files_are_named(tmp_path):
    good = write_mp4([np.full((16, 16, 3), 9 * i, np.uint8) for i in range(20)], tmp_path / "good.mp4")
    data = bytearray(good.read_bytes())
    unknown = tmp_path / "unknown.mp4"
    unknown.write_bytes(bytes(data).replace(b"avc1", b"zzzz"))
    with pytest.raises(UserError, match=r"video .*unknown\.mp4: codec tag 'zzzz' has no decoder in this FFmpeg"):
        VideoReader(unknown)
    start, end = data.find(b"mdat") + 4, len(data)
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"video .*corrupt\.mp4 \(codec h264\): frame 0 cannot be decoded"):
        read_frames(corrupt)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(UserError, match=r"video .*text\.mp4 cannot be opened \(Invalid data"):
        VideoReader(tmp_path / "text.mp4")
    with pytest.raises(UserError, match=r"video .*missing\.mp4 does not exist"):
        VideoReader(tmp_path / "missing.mp4")


def test_logger_adds_videos_to_tensorboard(tmp_path):
    video = write_mp4([np.full((24, 32, 3), 40 * i, np.uint8) for i in range(5)], tmp_path / "v.mp4", fps=5)
    logger = MetricsLogger(tmp_path / "run")
    logger.video("eval/video", 7, video)
    logger.close()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert events.Tags()["images"] == ["eval/video"]
    (image,) = events.Images("eval/video")
    assert image.step == 7 and (image.width, image.height) == (32, 24)
    assert image.encoded_image_string.startswith(b"GIF89a")
    with Image.open(io.BytesIO(image.encoded_image_string)) as gif:
        assert gif.n_frames == 5 and gif.info["duration"] == 200


def write_robomimic_without_freq(path: Path, env_name: str) -> None:
    """A robomimic image file as robomimic's dataset_states_to_obs.py writes it: env_kwargs name no control_freq."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 1,
                                             "env_kwargs": {"robots": ["Panda"], "has_renderer": False}})
        for i, n in enumerate([3, 4]):
            demo = data.create_group(f"demo_{i}")
            pos = rng.normal(size=(n + 1, 3)).astype(np.float32)
            demo.create_dataset("obs/robot0_eef_pos", data=pos[:n])
            demo.create_dataset("next_obs/robot0_eef_pos", data=pos[1:])
            demo.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, 7)))
            rewards = np.zeros(n)
            rewards[-1] = 1.0
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=rewards.astype(np.int64))


def test_robomimic_without_control_freq_takes_robosuites_default(tmp_path, capsys):
    src = tmp_path / "image.hdf5"
    write_robomimic_without_freq(src, "PickPlaceCan")
    run_conversion(load_config(["source=robomimic", f"input={src}", f"output={tmp_path / 'a.zarr'}"]))
    assert ZarrDataset(tmp_path / "a.zarr").attrs["control_freq"] == 20.0
    said = capsys.readouterr().out
    assert "env_kwargs give no control_freq; using robosuite's default for PickPlaceCan, 20 Hz" in said
    run_conversion(load_config(["source=robomimic", f"input={src}", f"output={tmp_path / 'b.zarr'}",
                                "control_freq=15"]))
    assert ZarrDataset(tmp_path / "b.zarr").attrs["control_freq"] == 15.0
    assert "robosuite's default" not in capsys.readouterr().out
    write_robomimic_without_freq(src, "NotARobosuiteEnv")
    with pytest.raises(UserError, match=r"the source does not state its control frequency; pass control_freq=HZ"):
        run_conversion(load_config(["source=robomimic", f"input={src}", f"output={tmp_path / 'c.zarr'}"]))

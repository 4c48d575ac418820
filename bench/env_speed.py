"""Measure the pick-and-place env: steps/s and resets/s with and without camera rendering.

    .venv/bin/python bench/env_speed.py [--image-size 64] [--steps 300] [--resets 50] [--wrist]

"Without camera" times the physics + controller alone (``task.step``, no frames rendered); "with camera" is the
full ``env.step`` that renders the observation images. Also prints the machine's load average, because the
numbers depend on how busy the CPU is (rendering runs on the CPU via Mesa llvmpipe when there is no GPU).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from calql_robot.envs.pick_place import make_pick_place_env


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


class _Clock:
    """Wall-clock and process CPU time (all threads, llvmpipe's render threads included) since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, count: int) -> tuple[float, float]:
        """(per wall second, per CPU second)."""
        return _rate(count, time.perf_counter() - self.wall), _rate(count, time.process_time() - self.cpu)


def bench(image_size: int, steps: int, resets: int, wrist: bool, fast_rendering: bool) -> dict[str, float]:
    """Return steps/s and resets/s with and without camera; random actions, auto-reset at episode end."""
    started = time.perf_counter()
    env = make_pick_place_env(image_size=image_size, wrist_camera=wrist, fast_rendering=fast_rendering, seed=0)
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
    result = {"build_s": build_s}

    env.reset(seed=0)
    clock = _Clock()
    for index in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[index])
        if terminated or truncated:
            env.reset()
    result["steps_per_s_camera"], result["steps_per_cpu_s_camera"] = clock.rates(steps)

    env.reset(seed=0)
    clock = _Clock()
    for index in range(steps):
        env.task.step(actions[index].astype(np.float64))  # physics + controller, no frames
    result["steps_per_s_no_camera"], result["steps_per_cpu_s_no_camera"] = clock.rates(steps)

    clock = _Clock()
    for _ in range(resets):
        env.reset()
    result["resets_per_s_camera"], result["resets_per_cpu_s_camera"] = clock.rates(resets)

    clock = _Clock()
    for _ in range(resets):
        env.task.reset()
    result["resets_per_s_no_camera"], result["resets_per_cpu_s_no_camera"] = clock.rates(resets)
    env.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resets", type=int, default=50)
    parser.add_argument("--wrist", action="store_true", help="also render the wrist camera")
    parser.add_argument("--slow-rendering", action="store_true",
                        help="keep shadows, reflections, MSAA and the full-detail robot meshes (for comparison)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = bench(args.image_size, args.steps, args.resets, args.wrist, not args.slow_rendering)
    load_after = os.getloadavg()
    print(f"pick_place env, image {args.image_size}x{args.image_size}, wrist camera {args.wrist}, "
          f"fast rendering {not args.slow_rendering}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
          f"{os.cpu_count()} CPUs")
    print(f"  build:                 {result['build_s']:.2f} s")
    print("                         per wall second   per CPU second")
    for what in ("steps", "resets"):
        for cam in ("camera", "no_camera"):
            label = f"{what}/s {'with camera' if cam == 'camera' else 'no camera'}:"
            print(f"  {label:<23}{result[f'{what}_per_s_{cam}']:>10.1f}{result[f'{what}_per_cpu_s_{cam}']:>17.1f}")
    print(f"  load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")


if __name__ == "__main__":
    main()

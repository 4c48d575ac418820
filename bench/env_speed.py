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


def bench(image_size: int, steps: int, resets: int, wrist: bool, fast_rendering: bool) -> dict[str, float]:
    """Return steps/s and resets/s with and without camera; random actions, auto-reset at episode end."""
    started = time.perf_counter()
    env = make_pick_place_env(image_size=image_size, wrist_camera=wrist, fast_rendering=fast_rendering, seed=0)
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
    result = {"build_s": build_s}

    env.reset(seed=0)
    started = time.perf_counter()
    for index in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[index])
        if terminated or truncated:
            env.reset()
    result["steps_per_s_camera"] = _rate(steps, time.perf_counter() - started)

    env.reset(seed=0)
    started = time.perf_counter()
    for index in range(steps):
        env.task.step(actions[index].astype(np.float64))  # physics + controller, no frames
    result["steps_per_s_no_camera"] = _rate(steps, time.perf_counter() - started)

    started = time.perf_counter()
    for _ in range(resets):
        env.reset()
    result["resets_per_s_camera"] = _rate(resets, time.perf_counter() - started)

    started = time.perf_counter()
    for _ in range(resets):
        env.task.reset()
    result["resets_per_s_no_camera"] = _rate(resets, time.perf_counter() - started)
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
    print(f"  steps/s  with camera:  {result['steps_per_s_camera']:.1f}")
    print(f"  steps/s  no camera:    {result['steps_per_s_no_camera']:.1f}")
    print(f"  resets/s with camera:  {result['resets_per_s_camera']:.1f}")
    print(f"  resets/s no camera:    {result['resets_per_s_no_camera']:.1f}")
    print(f"  load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")


if __name__ == "__main__":
    main()

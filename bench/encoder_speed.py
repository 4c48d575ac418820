"""Throughput of the image encoders against the machine's own fp32 matmul speed.

Usage::

    .venv/bin/python bench/encoder_speed.py                       # conv + resnet18 at 64 and 84, batch 256
    .venv/bin/python bench/encoder_speed.py --sizes 64 --encoders conv --batch 64 --min-time 1

For each encoder and image size it prints: analytic FLOPs per image (Conv2d: 2 * C_in/groups * k_h * k_w * C_out *
H_out * W_out, Linear: 2 * in * out, plus biases; see calql_robot.encoders.flops), images/s for a forward pass
(no grad) and for forward + backward (training: random shift on, loss = sum of features), the achieved FLOP/s
(forward + backward counted as 3x forward: the backward pass computes gradients for inputs and weights, 2x forward)
and that as a fraction of a reference fp32 rate measured in the same run: the larger of a 2048 x 2048 @ 2048 x 2048
matmul loop (2 * n^3 FLOPs each) and the same product run as a 1x1 convolution (oneDNN / cuDNN). Times are
medians over repeated calls after two warm-up calls. The encoder is one camera, feature_dim 50, with the
default options otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from calql_robot.encoders import build_encoder
from calql_robot.encoders.flops import count_flops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, min_time: float, min_calls: int = 3) -> tuple[float, float]:
    """(median seconds per call, CPU share) of ``fn`` after two warm-up calls, >= ``min_calls`` calls, >= ``min_time``.

    The median (not the mean) because the CPU is shared: other processes' bursts inflate single calls. CPU share =
    this process's CPU time / (wall time * torch threads) over the timed calls: 1.0 means it had its cores to itself.
    """
    for _ in range(2):
        fn()
    sync(device)
    times: list[float] = []
    cpu_start = time.process_time()
    while len(times) < min_calls or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    share = (time.process_time() - cpu_start) / (sum(times) * torch.get_num_threads())
    return statistics.median(times), share


def time_per_call(fn: Callable[[], object], device: torch.device, min_time: float) -> float:
    """Median seconds per call (see :func:`timed`)."""
    return timed(fn, device, min_time)[0]


def matmul_flops_per_s(device: torch.device, n: int, min_time: float) -> float:
    """fp32 FLOP/s of an n x n matmul loop (2 n^3 FLOPs per product; TF32 off; BLAS = MKL on CPU)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / time_per_call(lambda: a @ b, device, min_time)


def conv_gemm_flops_per_s(device: torch.device, n: int, min_time: float) -> float:
    """fp32 FLOP/s of the same n x n x n product done as a 1x1 convolution (oneDNN on CPU, cuDNN on GPU).

    On CPUs where MKL's sgemm is slow (MKL on AMD), this shows what the convolution library itself reaches.
    """
    side = max(1, int(round(n ** 0.5)))
    x = torch.randn(1, n, side, n // side, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2 * n * n * side * (n // side)
    return flops / time_per_call(lambda: torch.nn.functional.conv2d(x, w), device, min_time)


def bench_encoder(name: str, size: int, batch: int, device: torch.device, min_time: float) -> dict[str, float]:
    spec = {"cam": {"shape": [size, size, 3], "dtype": "uint8", "kind": "rgb"}}
    enc = build_encoder({"name": name, "feature_dim": 50}, spec).to(device)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    one = {"cam": images[:1]}
    flops = count_flops(enc, lambda: enc(one))
    obs = {"cam": images}

    def forward() -> None:
        with torch.no_grad():
            enc(obs)

    def forward_backward() -> None:
        enc.zero_grad(set_to_none=True)
        enc(obs, augment=True).sum().backward()

    fwd_s, fwd_share = timed(forward, device, min_time)
    train_s, train_share = timed(forward_backward, device, min_time)
    params = sum(p.numel() for p in enc.parameters())
    return {"flops": flops, "params": params, "fwd_ips": batch / fwd_s, "train_ips": batch / train_s,
            "share": min(1.0, (fwd_share + train_share) / 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["conv", "resnet18"], choices=["conv", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 84])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per measurement")
    parser.add_argument("--matmul-n", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)

    load = os.getloadavg()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (before)")
    with torch.no_grad():
        matmul = matmul_flops_per_s(device, args.matmul_n, args.min_time)
        conv_gemm = conv_gemm_flops_per_s(device, args.matmul_n, args.min_time)
    peak = max(matmul, conv_gemm)
    print(f"fp32 matmul {args.matmul_n}^2 (torch.matmul): {matmul / 1e9:.1f} GFLOP/s; same product as a 1x1 conv: "
          f"{conv_gemm / 1e9:.1f} GFLOP/s; '% ref' below is against the larger, {peak / 1e9:.1f} GFLOP/s")
    print(f"\nbatch {args.batch}; train = forward + backward with random shift; "
          "achieved = FLOPs/img x img/s (train counted as 3x forward);\nCPU share = CPU time / (wall x threads) "
          "while timing (1.00 = cores to itself; below that other processes took turns)\n")
    print("| encoder | size | params | MFLOP/img | fwd img/s | fwd GFLOP/s | fwd % ref | train img/s "
          "| train GFLOP/s | train % ref | CPU share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for enc_name in args.encoders:
        for size in args.sizes:
            r = bench_encoder(enc_name, size, args.batch, device, args.min_time)
            fwd_rate, train_rate = r["flops"] * r["fwd_ips"], 3 * r["flops"] * r["train_ips"]
            print(f"| {enc_name} | {size} | {r['params'] / 1e6:.2f} M | {r['flops'] / 1e6:.1f} | {r['fwd_ips']:.0f} "
                  f"| {fwd_rate / 1e9:.1f} | {100 * fwd_rate / peak:.0f}% | {r['train_ips']:.0f} "
                  f"| {train_rate / 1e9:.1f} | {100 * train_rate / peak:.0f}% | {r['share']:.2f} |", flush=True)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (after)")


if __name__ == "__main__":
    main()

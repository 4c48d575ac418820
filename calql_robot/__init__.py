"""calql_robot: Cal-QL offline pre-training and online fine-tuning for robot manipulation."""

__version__ = "0.1.0"


def _load_triton_before_mesa() -> None:
    """Load Triton's LLVM before any MuJoCo rendering context exists.

    PyTorch imports Triton lazily (the first optimizer triggers it). When Mesa's software renderer (llvmpipe, used
    by headless EGL/OSMesa rendering) has already loaded its own LLVM, loading libtriton afterwards crashes the
    process with a segmentation fault (reproduced 4 out of 4 times here); loaded first, both coexist.
    """
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:
        pass


_load_triton_before_mesa()

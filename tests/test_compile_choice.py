"""compile=auto|true|false: what each chooses on CPU and CUDA, and bad values refused by name."""

from __future__ import annotations

import pytest
import torch

from calql_robot.errors import UserError
from calql_robot.training.compile_choice import AUTO_MIN_UPDATES, choose_compile


def test_auto_compiles_on_cuda_for_long_runs_only_and_never_on_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_compile("auto", cpu, 10**6)[0] is False
    assert choose_compile("auto", cuda, 10**6)[0] is True
    assert choose_compile("auto", cuda, AUTO_MIN_UPDATES - 1)[0] is False
    assert choose_compile(True, cpu, 2)[0] is True and choose_compile("true", cpu, 2)[0] is True
    assert choose_compile(False, cuda, 10**6)[0] is False
    assert "CPU" in choose_compile("auto", cpu, 10**6)[1]


def test_unknown_value_is_refused_by_name() -> None:
    with pytest.raises(UserError, match="compile is 'sometimes'; expected auto, true or false"):
        choose_compile("sometimes", torch.device("cpu"), 10)

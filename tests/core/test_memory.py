"""CPU inference without page-fault churn: the allocator thresholds and the batch size."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from qbench.core.memory import (
    ACTIVATION_BUDGET,
    USER_SETTINGS,
    inference_batch,
    is_glibc,
    largest_activation_bytes,
)
from qbench.train.encoders import build_encoder


def test_largest_activation_is_the_widest_layer_output():
    model = torch.nn.Sequential(torch.nn.Linear(10, 300), torch.nn.ReLU(), torch.nn.Linear(300, 4))
    x = torch.zeros(7, 10)
    assert largest_activation_bytes(model, x) == 7 * 300 * 4


def test_cpu_batch_keeps_the_largest_activation_under_the_budget():
    model = build_encoder("cnn", (1, 28, 28), 16).eval()
    item = torch.zeros(1, 1, 28, 28)
    bs = inference_batch(model, item, torch.device("cpu"))
    per_item = largest_activation_bytes(model, item)
    assert per_item == 32 * 28 * 28 * 4  # the first conv block's output
    assert bs * per_item <= ACTIVATION_BUDGET < (bs + 1) * per_item
    assert inference_batch(model, item, torch.device("cuda")) == 1024  # GPUs: OOM halving
    tiny = torch.nn.Linear(3, 2)
    assert inference_batch(tiny, torch.zeros(1, 3), torch.device("cpu")) == 4096  # capped


def test_embedding_does_not_depend_on_the_batch_size():
    from qbench.train.trainer import Trainer
    from tests.train.test_engine import _digits_ctx, _params

    trainer = Trainer(_digits_ctx(), _params(epochs=1), dim=8).fit()
    x = trainer.ctx.x("val")
    auto = trainer.embed(x)
    assert trainer.embedder.batch is not None
    np.testing.assert_allclose(auto, trainer.embed(x, batch_size=7), rtol=1e-5, atol=1e-6)
    assert trainer.embed(x[:0]).shape == (0, 8)


PROBE = """
import resource, sys, numpy as np, torch
from qbench.train.encoders import build_encoder
from qbench.core.memory import inference_batch, keep_freed_memory
torch.set_num_threads(1)
kept = sys.argv[1] == "kept"
if kept:
    assert keep_freed_memory()
model = build_encoder("cnn", (1, 28, 28), 16).eval()
x = torch.rand(1500, 1, 28, 28)
bs = inference_batch(model, x[:1], torch.device("cpu"))
def embed():
    with torch.inference_mode():
        for start in range(0, len(x), bs):
            model(x[start:start + bs])
for _ in range(3):
    embed()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
embed()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not is_glibc(), reason="glibc's allocator only")
def test_kept_memory_removes_the_page_faults_of_cpu_inference():
    """The same embedding, in two fresh processes: glibc's defaults vs the thresholds."""
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    faults = {}
    for mode in ("default", "kept"):
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                              text=True, env=env, check=True)
        faults[mode] = int(done.stdout.split()[-1])
    assert faults["kept"] * 5 < faults["default"], faults


def test_user_allocator_settings_win(monkeypatch):
    import qbench.core.memory as memory

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)  # the next caller decides afresh

"""CPU inference without page-fault churn: the allocator thresholds and the batch size."""

import resource
import sys

import numpy as np
import pytest
import torch

from qbench.encoders import build_encoder
from qbench.memory import (
    ACTIVATION_BUDGET,
    inference_batch,
    keep_freed_memory,
    largest_activation_bytes,
)


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
    from qbench.engine import Trainer
    from tests.test_engine import _digits_ctx, _params

    trainer = Trainer(_digits_ctx(), _params(epochs=1), dim=8).fit()
    x = trainer.ctx.x("val")
    auto = trainer.embed(x)
    assert trainer.infer_batch is not None
    np.testing.assert_allclose(auto, trainer.embed(x, batch_size=7), rtol=1e-5, atol=1e-6)
    assert trainer.embed(x[:0]).shape == (0, 8)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_activations_are_reused_without_new_page_faults():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    # A 24 MiB buffer (under the fixed 32 MiB mmap threshold) allocated and freed
    # repeatedly: after the first round its pages stay in the process.
    for _ in range(2):
        torch.ones(6 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(6 * 1024 * 1024)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 6 * 1024 * 1024 * 4 // 4096 // 10  # < a tenth of one fault per page

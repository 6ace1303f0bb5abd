"""Shared test settings."""

import faiss
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny problems: one thread is faster, and steadier on a shared 2-core machine."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The arith tests run many tiny convolutions; one intra-op thread is far faster on a busy 2-core box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

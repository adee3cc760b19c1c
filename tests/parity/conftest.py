import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on a shared, busy machine's several."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

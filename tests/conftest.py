import pytest, torch

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still part of the full suite)")

@pytest.fixture(autouse=True)
def seed_each_test():
    "Every test starts from the same torch RNG state, whatever ran before"
    torch.manual_seed(0)
    yield

"""One Numba thread for the refsim.nn tests: their products are small, and on a shared,
oversubscribed machine every parallel launch waits for a second core (measured: a 45-step MLP
epoch takes 0.5 s with one thread and 10 s with two under load). Results do not depend on the
thread count; the setting is restored after each test."""

import numba
import pytest


@pytest.fixture(autouse=True)
def _one_numba_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)

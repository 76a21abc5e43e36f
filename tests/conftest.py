"""Generic test settings and fixtures shared by all tests (keep this file small)."""

import pytest
import torch


def pytest_configure(config):
    # Tests run as `pytest -n 2` on 2-core machines shared with other jobs: one intra-op thread per
    # worker avoids oversubscription (measured: a 3-epoch digits run took 1.2 s with 1 thread and
    # 49 s with 2 threads under load).
    torch.set_num_threads(1)


@pytest.fixture
def torch_seed() -> int:
    """Seed torch's global generator with 0 for the test and return the seed."""
    torch.manual_seed(0)
    return 0


# A small digits run (two rounds, seconds to make) for the tests of the views.
VIEW_RUN = dict(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
                fractions=(0.5, 1.0), threads=1)


@pytest.fixture(scope="module")
def view_run_dir(tmp_path_factory):
    import pwfn_viz
    out = tmp_path_factory.mktemp("views") / "run"
    pwfn_viz.run(pwfn_viz.RunConfig(**VIEW_RUN), out_dir=out, progress=False, verbose=False)
    return out


@pytest.fixture(scope="module")
def view_run(view_run_dir):
    import pwfn_viz
    return pwfn_viz.load_run(view_run_dir)

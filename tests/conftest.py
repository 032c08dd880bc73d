import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ci_world(tmp_path_factory):
    """The ci-scale world, generated once per test session."""
    from rgalign.config import WorldConfig
    from rgalign.world.generate import generate_world
    return generate_world(WorldConfig(scale="ci"), tmp_path_factory.mktemp("worlds"), progress=False)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 300-user world for tests that rewrite sources."""
    from rgalign.config import WorldConfig
    from rgalign.world.generate import generate_world
    return generate_world(WorldConfig(scale="ci", n_users=300), tmp_path_factory.mktemp("small"), progress=False)

"""The benchmark world: a simulator that produces a dataset following its own data contract."""
from functools import lru_cache
from pathlib import Path

CONTRACT_PATH = Path(__file__).with_name("contract.yaml")


@lru_cache(maxsize=1)
def bench_contract():
    """The benchmark world's contract (``rgalign/world/contract.yaml``)."""
    from rgalign.contract import load_contract
    return load_contract(CONTRACT_PATH)

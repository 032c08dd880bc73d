"""The data contract of a project (``contract.yaml``) and the checks of a dataset against it."""
from rgalign.contract.contract import FILE, ContractError, DataContract, Feature, View, load_contract

__all__ = ["FILE", "ContractError", "DataContract", "Feature", "View", "load_contract"]

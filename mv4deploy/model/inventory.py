"""The tensor inventory of a model: every tensor of its checkpoint as shipped, built from the config alone
(``build_inventory``). The types are in ``tensors``, the per-family builders in ``inventory_deepseek`` and
``inventory_dense``, the per-weight format rules of a quantized checkpoint in ``rules``."""

from __future__ import annotations

from mv4deploy.model import inventory_deepseek, inventory_dense  # noqa: F401  (registers builders)
from mv4deploy.model.rules import apply_rules
from mv4deploy.model.spec import ModelSpec
from mv4deploy.model.tensors import INVENTORY_BUILDERS, Inventory, TensorTable


def build_inventory(spec: ModelSpec) -> Inventory:
    if spec.formats.rules:  # written by `mv4deploy quantize`: each weight's format from its first matching rule
        tensors = TensorTable(apply_rules(spec))
    else:
        tensors = INVENTORY_BUILDERS[spec.architecture](spec)
    duplicated = tensors.duplicate_name()
    if duplicated:
        raise AssertionError(f"inventory of {spec.name} names {duplicated!r} twice")
    return Inventory(spec=spec, tensors=tensors)

"""The spurious-feature tasks, now shared by every method: they live in
:mod:`hookedclip.data.spurious`; these names stay importable from here."""

from hookedclip.data.spurious import (
    WATERBIRDS_CONCEPTS,
    SpuriousTask,
    toy_attribute_data,
    toy_concepts,
    toy_task,
    waterbirds_task,
)

__all__ = ["SpuriousTask", "toy_attribute_data", "toy_concepts", "toy_task", "waterbirds_task", "WATERBIRDS_CONCEPTS"]

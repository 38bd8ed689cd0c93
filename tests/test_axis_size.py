"""``axis_size``: a read-only attribute that follows the tensor it measures."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hookedclip.axis_size import axis_size


@dataclass
class _Table:
    values: torch.Tensor
    rows = axis_size("values", 0)
    last = axis_size("values", -1, "Columns.")


def test_axis_size_reads_the_current_tensor_and_is_not_a_field():
    table = _Table(torch.zeros(3, 5))
    assert (table.rows, table.last) == (3, 5)
    table.values = torch.zeros(7, 2)
    assert (table.rows, table.last) == (7, 2)
    assert _Table.last.__doc__ == "Columns." and "axis 0 of ``values``" in _Table.rows.__doc__
    assert list(_Table.__dataclass_fields__) == ["values"]


def test_axis_size_cannot_be_assigned():
    with pytest.raises(AttributeError, match="rows is read-only: it is the size of axis 0 of values"):
        _Table(torch.zeros(2, 2)).rows = 4

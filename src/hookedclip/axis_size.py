"""A read-only attribute that is the size of one axis of a tensor field, declared in one line:
``n_heads = axis_size("S", 0)`` instead of a three-line ``@property``."""

from __future__ import annotations


class axis_size:  # noqa: N801 (used like ``property``)
    """``name = axis_size(field, axis, doc)``: reading ``obj.name`` gives ``getattr(obj, field).shape[axis]``."""

    def __init__(self, field: str, axis: int, doc: str | None = None) -> None:
        self.field, self.axis = field, axis
        self.__doc__ = doc or f"The size of axis {axis} of ``{field}``."

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner: type | None = None):
        if obj is None:
            return self
        return getattr(obj, self.field).shape[self.axis]

    def __set__(self, obj, value) -> None:
        raise AttributeError(f"{self.name} is read-only: it is the size of axis {self.axis} of {self.field}")


__all__ = ["axis_size"]

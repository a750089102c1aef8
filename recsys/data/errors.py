"""Errors raised on bad input data: each names the file, the column, the row (when known) and the problem."""

from __future__ import annotations


class DataValidationError(ValueError):
    """A KuaiLive file does not match the expected schema or conventions.

    ``row`` is the 1-based data row (the header is not counted), so the text-file line is ``row + 1``.
    """

    def __init__(self, file: str, column: str | None, problem: str, row: int | None = None) -> None:
        self.file = file
        self.column = column
        self.row = row
        self.problem = problem
        where = file
        if column is not None:
            where += f", column '{column}'"
        if row is not None:
            where += f", row {row} (line {row + 1})"
        super().__init__(f"{where}: {problem}")

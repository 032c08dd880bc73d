"""User-facing input errors. ``rgalign`` prints these as one line (exit 2); any other exception is an internal
bug and keeps its traceback."""


class MissingInputError(KeyError, ValueError):
    """A required column, key or record is missing from what the user passed (a frame, a log, a world).

    A ``KeyError`` (what a lookup raises) and a ``ValueError`` (bad input): ``cli.main`` reports it in one
    line, while a bare ``KeyError`` from a bug in the code keeps its traceback.
    """

    def __str__(self) -> str:   # KeyError quotes its message; an input error reads as a sentence
        return str(self.args[0]) if self.args else ""

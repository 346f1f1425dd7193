"""The one error type for bad recipes: the CLI prints its message as a single line, without a traceback."""


class RecipeError(ValueError):
    """A recipe (or an override) is invalid; the message names the file, the key and what is wrong.

    ``key``: the dotted key the problem is at, when there is one (an unknown key, a wrong type), so the loader can
    say whether it came from the recipe file or from a ``--set`` override.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

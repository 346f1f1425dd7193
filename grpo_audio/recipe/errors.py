"""The one error type for bad recipes: the CLI prints its message as a single line, without a traceback."""


class RecipeError(ValueError):
    """A recipe (or an override) is invalid; the message names the file, the key and what is wrong."""

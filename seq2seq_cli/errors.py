"""The one exception type that means "the user has to fix something".

Every module raises :class:`UserError` for bad input (a missing file, a wrong config value,
a corpus that does not line up). The CLI turns it into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by the user's input, with a message that says what to do."""

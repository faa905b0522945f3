"""The exception types that mean "the user has to fix something".

Every module raises :class:`UserError` for bad input (a missing file, a wrong config value,
a corpus that does not line up). The CLI turns it into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback. :class:`ClientError` is its
counterpart for a client of ``s2s serve``: an HTTP answer with a status and the message.
"""


class UserError(Exception):
    """An error caused by the user's input, with a message that says what to do."""


class ClientError(Exception):
    """Something the client sent or asked for is wrong: answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

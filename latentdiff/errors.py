"""The one exception type that means "the user gave bad input".

The CLI turns it into a single line on stderr and exit status 2 (the server into HTTP 4xx);
anything else that escapes is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input from the user: a bad value, a missing or corrupt file, an unwritable path."""

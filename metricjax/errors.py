"""The one exception type a user is meant to read.

Raised for anything the user can fix (bad config key, missing data, corrupt
file, a batch that cannot be built). The CLIs print its message as one
paragraph and exit non-zero instead of showing a traceback.
"""


class UserError(Exception):
  """Bad input: the message says what was wrong, where, and what to do."""

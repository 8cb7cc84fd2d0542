"""The one exception type a user is meant to read.

Raised for anything the user can fix (bad config key, missing data, corrupt
file, a batch that cannot be built). The CLIs print its message as one
paragraph and exit non-zero instead of showing a traceback.
"""

import functools
import sys


class UserError(Exception):
  """Bad input: the message says what was wrong, where, and what to do."""


def one_line(e: Exception, limit: int = 300) -> str:
  """An exception's message on one line, cut to `limit` characters, for
  quoting a library's error inside a UserError."""
  text = " ".join(str(e).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def exit_on_user_error(main):
  """Wraps an absl main: a UserError becomes its message and exit code 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"\nError: {e}\n", file=sys.stderr)
      sys.exit(2)
  return wrapped


def parse_flags_or_exit(argv):
  """absl flags parser for app.run: a bad flag or --config.X override (which
  ml_collections reports with a traceback) becomes one paragraph and exit 2."""
  from absl import flags  # Only the CLIs need absl.
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # KeyError, flags.Error, UserError from get_config...
    message = e
    if isinstance(e, KeyError):  # ml_collections: unknown --config.FIELD.
      message = f"no such config field {str(e.args[0]).strip(chr(34))}"
    print(f"\nError in the command line: {message}\nSee --helpfull for the flags.\n",
          file=sys.stderr)
    sys.exit(2)

class MoEError(Exception):
    """A problem the user can fix (bad path, bad data, wrong checkpoint). The CLI prints its
    message on one line and exits non-zero, with no traceback."""

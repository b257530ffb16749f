"""The error type for user mistakes: the CLI prints it as one line on stderr and exits 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad config key, corrupt file...).

    The message must stand alone on one line and name the file or key at fault.
    Anything that is not a UserError is a bug and keeps its traceback.
    """

    exit_code = 2

"""The error type for user mistakes (one line on stderr, exit 2) and the package's documented exit statuses."""

EXIT_OK = 0
EXIT_FAILED = 1  # a bug, or a sweep / study with a failed point (the rows say which)
EXIT_USER_ERROR = 2  # bad input: one line naming the file or key
EXIT_OOM = 3  # `cityseg bench`: the point ran out of memory (its row says oom)
# Stopped by SIGTERM / SIGUSR1 (a cluster's time limit or preemption) after saving where it was: rerun the same
# command to resume. 75 is sysexits' EX_TEMPFAIL ("try again later"); a job script requeues on it.
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A mistake the user can fix (bad path, bad config key, corrupt file...).

    The message must stand alone on one line and name the file or key at fault.
    Anything that is not a UserError is a bug and keeps its traceback.
    """

    exit_code = EXIT_USER_ERROR

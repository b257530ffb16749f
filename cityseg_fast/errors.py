"""The error type for user mistakes (one line on stderr, exit 2) and the package's documented exit statuses."""

EXIT_OK = 0
EXIT_FAILED = 1  # a bug, or a sweep / study with a failed point (the rows say which)
EXIT_USER_ERROR = 2  # bad input: one line naming the file or key
EXIT_OOM = 3  # `cityseg bench`: the point ran out of memory (its row says oom)
# Stopped by SIGTERM / SIGUSR1 (a cluster's time limit or preemption) after saving where it was: rerun the same
# command to resume. 75 is sysexits' EX_TEMPFAIL ("try again later"); a job script requeues on it. Each rank
# of a torchrun job exits 75, but torchrun itself exits 1 (any worker's non-zero status is a failure to it,
# and so is a signal to torchrun): behind torchrun, tell a preemption by the run's last metrics.jsonl event,
# `preempted` (README, "Running on a cluster").
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A mistake the user can fix (bad path, bad config key, corrupt file...).

    The message must stand alone on one line and name the file or key at fault.
    Anything that is not a UserError is a bug and keeps its traceback.
    """

    exit_code = EXIT_USER_ERROR


class Preempted(Exception):
    """Stopped by SIGTERM / SIGUSR1 after saving where it was (cityseg_fast/preemption.py); rerunning the same
    command resumes. Not a failure: nothing records it as an error row, and the CLI prints its one line and
    exits EXIT_PREEMPTED."""

    exit_code = EXIT_PREEMPTED

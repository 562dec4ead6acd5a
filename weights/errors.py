"""The one error users see about weight files and downloads."""


class WeightsError(Exception):
    """A weight file could not be found, fetched or read.

    The message is one line that says what was wrong and what to do; the command line prints it and
    exits with status 2, so it must make sense without a traceback.
    """

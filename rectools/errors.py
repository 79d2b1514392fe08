"""User errors: bad config, bad data, missing files. The command lines print them as one line and
exit with status 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    def __init__(self, path, line_no, message):
        super().__init__(f"{path}:{line_no}: {message}")
        self.path, self.line_no, self.message = path, line_no, message

    def __reduce__(self):  # travels back from the benchmark's worker processes
        return DataError, (self.path, self.line_no, self.message)

"""The one exception of `bigan.eval`: an input the user can fix (a missing weights file, a
classifier of another data set, a bad --psi). The CLI prints it as one line with exit code 2.
Standard library only, so every eval module can raise it without importing torch."""


class EvalError(ValueError):
    """An evaluation input is missing or unusable; the message says what to do."""

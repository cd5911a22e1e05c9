"""One error type for everything a user can get wrong, so the CLI prints one line and exits."""


class EtloraError(Exception):
    """Bad input or a broken bundle. The message says expected -> received -> hint."""


class BundleError(EtloraError):
    """A bundle file is missing, damaged, or from another bundle."""


class AdapterError(EtloraError):
    """A PEFT adapter does not fit the foundation or the program."""

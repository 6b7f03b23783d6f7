"""The one exception type users see: a message that names the file, line or field at fault."""


class HsrmError(Exception):
    """Bad input or an incompatible artefact; the CLI prints the message and exits with code 2."""

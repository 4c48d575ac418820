"""Errors meant for users: bad input, shown as one paragraph without a traceback."""


class UserError(Exception):
    """Bad input from the user (file, key, shape, value); the message names what and says what was expected."""


class ConfigError(UserError):
    """A bad config value (key=value on the command line or in a config file): never blamed on a data record."""

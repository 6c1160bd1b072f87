"""The command line's argument parser: bad input is one line naming the problem and where the usage is (exit 2),
never argparse's usage block or a traceback."""

from __future__ import annotations

import argparse

from ..infra.suite import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors raise ConfigError (the command line prints it and exits with 2)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")

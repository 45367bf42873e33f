"""Errors of the CLIP layer that callers catch without loading torch (the CLI's error handling)."""

from __future__ import annotations

# The remedy for missing weights names the options of whoever reads it: command-line flags, or
# the parameters of a Prefect deployment run (``WeightsUnavailableError.reworded``).
CLI_OPTION_NAMES = {"checkpoint": "--clip-checkpoint FILE", "random": "--pretrained none"}
PREFECT_PARAMETER_NAMES = {"checkpoint": "--param clip_checkpoint=FILE", "random": "--param pretrained=none"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: no network and no local file).

    ``problem`` says what failed; ``remedy`` (a template over the option names) says what to do.
    """

    def __init__(self, problem: str, remedy: str = "", names: dict[str, str] = CLI_OPTION_NAMES):
        self.problem, self.remedy = problem, remedy
        super().__init__(f"{problem}\n{remedy.format(**names)}" if remedy else problem)

    def reworded(self, names: dict[str, str]) -> WeightsUnavailableError:
        """The same error, its remedy naming other options (e.g. ``PREFECT_PARAMETER_NAMES``)."""
        return WeightsUnavailableError(self.problem, self.remedy, names)

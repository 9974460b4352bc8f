"""Error types, named by what the caller should do next."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where something is in a file: 1-based line and column (0 when unknown)."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        if self.col <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem in the user's input: what, where, and how to fix it."""

    file: str
    line: int
    col: int
    message: str
    hint: str = ""
    severity: str = "error"  # "error" | "warning"

    @property
    def location(self) -> Location:
        return Location(self.file, self.line, self.col)

    def format(self) -> str:
        text = f"{self.location}: {self.severity}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "message": self.message,
            "hint": self.hint,
        }


class SkyformError(Exception):
    """Base of every error Skyform raises on purpose."""


@dataclass
class SpecError(SkyformError):
    """The user's input is wrong: fix it, no retry helps. Carries every problem found."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics) or "invalid input"


class TransientError(SkyformError):
    """Something that may work if tried again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapacityError(SkyformError):
    """A place has no capacity (or quota) for a request: fail over to the next candidate."""

    def __init__(self, message: str, placement: object = None) -> None:
        super().__init__(message)
        self.placement = placement


class ProviderError(SkyformError):
    """A provider failed in a way that retrying or failing over will not fix: stop and report."""


class LockHeldError(SkyformError):
    """The state lock is held by someone else; `holder` says who."""

    def __init__(self, message: str, holder: object = None) -> None:
        super().__init__(message)
        self.holder = holder

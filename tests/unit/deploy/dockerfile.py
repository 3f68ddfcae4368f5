"""Just enough of a Dockerfile and .dockerignore reader for the deployment tests."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """The arguments as a list, from the JSON (exec) form or split like a shell."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                pass
            else:
                return [str(word) for word in parsed]
        return shlex.split(text)


def parse(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments and parser directives dropped)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise ValueError(f"{path}: continuation at the end of the file")
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each list starts with its FROM)."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM."""
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip()
    return args


def substitute(text: str, variables: dict[str, str]) -> str:
    """Expands ${NAME} and $NAME with ``variables`` (unknown names stay as they are)."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, text)


def env_values(stage: list[Instruction]) -> dict[str, str]:
    """The ENV settings of a stage (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use the ENV NAME=value form")
                env[name] = value
    return env


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            if pattern.startswith("/", index):
                out += "/?"
                index += 1
            continue
        char = pattern[index]
        out += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        index += 1
    return re.compile(out + r"(/.*)?$")


def dockerignore_includes(ignore_file: Path, path: str) -> bool:
    """True when ``path`` (relative to the context) is sent with the build context.

    Docker's rules: patterns in order, the last one that matches wins, ``!``
    re-includes, and a pattern that matches a directory matches what is in it.
    """
    included = True
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        if _pattern_regex(pattern).match(path.strip("/")):
            included = negate
    return included

"""The command line every entry point shares (docs/cli.md): :class:`Parser`, argparse ``type=`` checks for numbers
and paths, and :func:`run_main`, the last line of defence (one ``error:`` line, never a traceback)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from utils.errors import INPUT_ERRORS
from utils.io.paths import (describe_os_error, existing_folder_problem, readable_file_problem,
                             writable_file_problem, writable_folder_problem)

INT32_MAX = 2 ** 31 - 1
INT64_MAX = 2 ** 63 - 1
TRUE_WORDS, FALSE_WORDS, NONE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


# ------------------------------------------------------------------------------------------ numbers
def number_type(cast, minimum, strict: bool = False, below: Optional[float] = None, what: str = "a number",
                maximum: Optional[float] = None):
    """argparse ``type=``: a finite ``cast`` value >= ``minimum`` (> with ``strict``; < ``below``, <= ``maximum``
    if given). Integers are also at most :data:`INT32_MAX` unless ``maximum`` says otherwise."""
    maximum = INT32_MAX if cast is int and maximum is None else maximum

    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or (minimum is not None and (value < minimum or (strict and value == minimum)))
                or (below is not None and value >= below) or (maximum is not None and value > maximum)):
            big = maximum is not None and math.isfinite(value) and value > maximum
            raise argparse.ArgumentTypeError(f"expected {what}{f' (at most {maximum})' if big else ''}, got {text}")
        return value

    return parse


positive_int = number_type(int, 1, what="a positive integer")
non_negative_int = number_type(int, 0, what="an integer >= 0")
any_int = number_type(int, -INT64_MAX - 1, maximum=INT64_MAX, what="an integer that fits in 64 bits")
non_negative_float = number_type(float, 0.0, what="a finite number >= 0")
positive_float = number_type(float, 0.0, strict=True, what="a finite number > 0")


def int_list(minimum: int = 1, what: str = "positive integers") -> Callable[[str], List[int]]:
    """argparse ``type=``: a comma-separated list of integers >= ``minimum`` (``1,4,16``)."""
    one = number_type(int, minimum, what=what)

    def parse(text: str) -> List[int]:
        try:
            items = [one(t.strip()) for t in text.split(",") if t.strip()]
        except argparse.ArgumentTypeError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. 1,4,16), got {text!r}")
        return items

    return parse


def machine_limit(per_cpu: int = 1, floor: int = 1) -> Tuple[int, int]:
    """(this machine's CPUs, the most of something it can run: ``per_cpu`` per CPU, at least ``floor``)."""
    cpus = max(1, os.cpu_count() or 1)
    return cpus, max(floor, per_cpu * cpus)


def machine_count(per_cpu: int = 1, floor: int = 1, what: str = "threads") -> Callable[[str], int]:
    """argparse ``type=``: a positive integer of ``what`` this machine can run (:func:`machine_limit`)."""
    cpus, limit = machine_limit(per_cpu, floor)
    return number_type(int, 1, maximum=limit, what=f"a number of {what} from 1 to {limit} (this machine has {cpus} "
                                                   "CPUs)")


# ------------------------------------------------------------------------------------------ paths (utils.io.paths)
def _arg_type(problem: Callable[[str], Optional[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        msg = problem(text)
        if msg:
            raise argparse.ArgumentTypeError(msg)
        return text

    return parse


readable_file, writable_folder = _arg_type(readable_file_problem), _arg_type(writable_folder_problem)
existing_folder, writable_file = _arg_type(existing_folder_problem), _arg_type(writable_file_problem)


# ------------------------------------------------------------------------------------------ last line of defence
def report_input_error(err: Exception) -> int:
    """Print ``error: <message>`` once (on the first process of a distributed run) and return the exit code 2."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"error: {err}", file=sys.stderr)
    return 2


def run_main(main: Callable[..., object], argv=None) -> int:
    """Call ``main(argv)`` for ``if __name__ == '__main__'``: an ``OSError`` prints one ``error:`` line naming
    the path (exit 1), a bad-input error (config, dataset, checkpoint, model) its message (exit 2)."""
    from models.factory import ModelError  # lazy: hub_export -h runs without torch
    try:
        result = main(argv)
    except INPUT_ERRORS + (ModelError,) as err:
        return report_input_error(err)
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


# ------------------------------------------------------------------------------------------ one grammar (docs/cli.md)
class BoolFlag(argparse.BooleanOptionalAction):
    """argparse's switch (``--x`` / ``--no-x``); :class:`Parser` reads ``--x true|false`` and ``--x=false`` as
    those. ``allow_none``: a tri-state key whose default is "automatic" also takes ``--x none``."""

    def __init__(self, *args, help=None, allow_none=False, **kwargs):
        super().__init__(*args, **kwargs)  # without help: the formatter appends the default once
        self.help, self.allow_none = help, allow_none


class DefaultsOnceFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text with the default appended once: not when the text already names it, nor for switches that are
    off, nor for empty or suppressed defaults."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if ("default" in text or default in (None, False, "", [], argparse.SUPPRESS) or not action.option_strings
                or action.nargs == 0 and not isinstance(action, BoolFlag)):
            return text
        default = ("true" if default else "false") if isinstance(default, bool) else "%(default)s"
        return f"{text} (default: {default})" if text else f"default: {default}"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` speaking the one grammar of the entry points (docs/cli.md): defaults shown once,
    :meth:`add_bool` switches, :meth:`add_alias` old spellings that still work but stay out of ``-h``.
    ``legacy(argv)`` rewrites old spellings a plain alias cannot express (e.g. a changed value)."""

    def __init__(self, *args, legacy: Optional[Callable[[List[str]], List[str]]] = None, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsOnceFormatter)
        super().__init__(*args, **kwargs)
        self.legacy, self.aliases = legacy, {}  # aliases: old spelling -> the flag it stands for

    def add_bool(self, *flags, default=False, help="", allow_none=False, **kwargs):
        """A :class:`BoolFlag` switch (``--x``/``--no-x``/``--x true|false``)."""
        return self.add_argument(*flags, action=BoolFlag, default=default, help=help, allow_none=allow_none, **kwargs)

    def add_alias(self, *old, of: str, **kwargs):
        """Old spellings ``old`` of the flag ``of``: they still work (same dest and type unless ``kwargs`` say
        otherwise), hidden from ``-h``; :attr:`aliases` lists them (docs/cli.md, tests)."""
        target = next(a for a in self._actions if of in a.option_strings)
        if "action" not in kwargs and isinstance(target, BoolFlag):
            kwargs.update(action=BoolFlag, allow_none=target.allow_none)
        elif "action" not in kwargs:
            kwargs = dict(type=target.type, nargs=target.nargs, choices=target.choices, **kwargs)
            kwargs.update(const=target.const) if target.nargs == "?" else None
        kwargs.setdefault("default", argparse.SUPPRESS)
        action = self.add_argument(*old, dest=kwargs.pop("dest", target.dest), help=argparse.SUPPRESS, **kwargs)
        self.aliases.update(dict.fromkeys(action.option_strings, of))
        return action

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(self.normalize(sys.argv[1:] if args is None else args), namespace)
        for dest in self._nones:
            setattr(namespace, dest, None)
        return namespace, rest

    def normalize(self, args: Sequence[str]) -> List[str]:
        """``args`` in this parser's canonical spelling: old spellings rewritten (``legacy``), switches as ``--x`` /
        ``--no-x`` (a switch takes the next word only if it is a truth value, or where no positionals exist)."""
        args = self.legacy(list(args)) if self.legacy else list(args)
        switches = {s: a for a in self._actions if isinstance(a, BoolFlag) for s in a.option_strings}
        positionals = any(not a.option_strings for a in self._actions)
        out, i, self._nones = [], 0, []
        while i < len(args):
            token, i = args[i], i + 1
            if token == "--":
                out += args[i - 1:]
                break
            flag, eq, value = token.partition("=")
            action = switches.get(flag)
            if action is None:
                out.append(token)
                continue
            nxt = args[i].strip().lower() if i < len(args) and not args[i].startswith("-") else None
            words = TRUE_WORDS + FALSE_WORDS + (NONE_WORDS if action.allow_none else ())
            if not eq and nxt is not None and (nxt in words or not positionals) and not flag.startswith("--no-"):
                value, eq, i = args[i], "=", i + 1
            word = value.strip().lower()
            if eq and word in NONE_WORDS and action.allow_none:
                self._nones.append(action.dest)
            elif eq and word not in TRUE_WORDS + FALSE_WORDS:
                self.error(f"{flag}: expected true or false{' (or none)' if action.allow_none else ''}, got "
                           f"{value!r}; the switch forms are {flag}, --no-{flag[2:]} and {flag} true|false")
            else:
                out.append(flag if not eq or word in TRUE_WORDS else f"--no-{flag[2:]}")
        return out


def without_options(argv: Sequence[str], valued: Sequence[str] = (), flags: Sequence[str] = ()) -> List[str]:
    """``argv`` without the options ``valued`` (``--key value`` or ``--key=value``) and ``flags`` (no value)."""
    out, skip = [], False
    for a in argv:
        if not skip and a not in flags and a not in valued and a.split("=", 1)[0] not in valued:
            out.append(a)
        skip = not skip and a in valued
    return out

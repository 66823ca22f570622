"""Input checks shared by the argparse commands (``benchmark.py``, ``python -m utils.*``) and the run folder.

* argparse ``type=`` functions for numbers: finite, in range, integers that fit (:func:`number_type`,
  :data:`positive_int`, :data:`non_negative_int`, :data:`positive_float`, ...), :func:`int_list`
  (``1,4,16``) and :func:`machine_count` (threads / processes a machine can run);
* path checks that return the problem as one sentence, or None: :func:`readable_file_problem`,
  :func:`writable_folder_problem` (read-only or full file systems are named as such), :func:`inside_problem`;
  argparse types built on them: :func:`readable_file`, :func:`existing_folder`, :func:`writable_folder`,
  :func:`writable_file`;
* :func:`describe_os_error` and :func:`run_main`, the last line of defence of every entry point: an
  ``OSError`` becomes one line naming the path and the cause, a bad input one ``error:`` line (exit 2).

Config files (train.py, validate.py) are checked by ``utils.config``, which uses the path checks here.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from utils.errors import INPUT_ERRORS

__all__ = ["number_type", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "any_int", "int_list", "machine_count", "readable_file_problem", "writable_folder_problem",
           "inside_problem", "readable_file", "existing_folder", "writable_folder", "writable_file",
           "describe_os_error", "run_main", "INT64_MAX", "INT32_MAX"]

INT32_MAX = 2 ** 31 - 1
INT64_MAX = 2 ** 63 - 1
MIN_FREE_BYTES = 1 << 20  # a file system with less free space than this is reported as full


# ------------------------------------------------------------------------------------------ numbers
def number_type(cast, minimum, strict: bool = False, below: Optional[float] = None, what: str = "a number",
                maximum: Optional[float] = None):
    """argparse ``type=``: a finite ``cast`` value >= ``minimum`` (> with ``strict``; < ``below``, <= ``maximum``
    if given). Integers are also at most :data:`INT32_MAX` unless ``maximum`` says otherwise."""
    if cast is int and maximum is None:
        maximum = INT32_MAX

    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or (minimum is not None and (value < minimum or (strict and value == minimum)))
                or (below is not None and value >= below) or (maximum is not None and value > maximum)):
            limit = f" (at most {maximum})" if maximum is not None and math.isfinite(value) and value > maximum \
                else ""
            raise argparse.ArgumentTypeError(f"expected {what}{limit}, got {text}")
        return value

    return parse


positive_int = number_type(int, 1, what="a positive integer")
non_negative_int = number_type(int, 0, what="an integer >= 0")
any_int = number_type(int, -INT64_MAX - 1, maximum=INT64_MAX, what="an integer that fits in 64 bits")
non_negative_float = number_type(float, 0.0, what="a finite number >= 0")
positive_float = number_type(float, 0.0, strict=True, what="a finite number > 0")


def int_list(minimum: int = 1, what: str = "positive integers") -> Callable[[str], List[int]]:
    """argparse ``type=``: a comma-separated list of integers >= ``minimum`` (``1,4,16``)."""
    one = number_type(int, minimum, what=what[:-1] if what.endswith("s") else what)

    def parse(text: str) -> List[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. 1,4,16), got {text!r}")
        try:
            return [one(t) for t in items]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. 1,4,16), got {text!r}") \
                from None

    return parse


def machine_count(per_cpu: int = 1, floor: int = 1, what: str = "threads") -> Callable[[str], int]:
    """argparse ``type=``: a positive integer of ``what`` this machine can run (<= ``per_cpu`` x its CPUs)."""
    cpus = max(1, os.cpu_count() or 1)
    limit = max(floor, per_cpu * cpus)
    return number_type(int, 1, maximum=limit, what=f"a number of {what} from 1 to {limit} (this machine has "
                                                   f"{cpus} CPUs)")


# ------------------------------------------------------------------------------------------ paths
def readable_file_problem(path: str, what: str = "file") -> Optional[str]:
    """Why ``path`` cannot be read as a file (missing, a folder, not readable), or None."""
    if os.path.isdir(path):
        return f"{what} {path} is a folder; give a file"
    if not os.path.exists(path):
        return f"{what} not found: {path}"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable (permission denied); fix its permissions or copy it"
    return None


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def writable_folder_problem(path: str, what: str = "output folder") -> Optional[str]:
    """Why files cannot be written in folder ``path`` (created if missing): a file in the way, no permission,
    a read-only or full file system; None when they can. Nothing is created."""
    target = os.path.abspath(os.path.expanduser(path))
    base = _nearest_existing(target)
    if not os.path.isdir(base):
        where = "" if base == target else f" (on the way to {target})"
        return f"{what} {base}{where} is a file, not a folder; choose another path"
    try:
        st = os.statvfs(base)
    except OSError:
        st = None
    if st is not None and st.f_flag & os.ST_RDONLY:
        return f"{what} {target} is on a read-only file system ({base}); choose a writable folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{what} {target} is not writable (permission denied on {base}); choose another folder"
    if st is not None and st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return (f"{what} {target} is on a full file system ({st.f_bavail * st.f_frsize} bytes free at {base}); "
                f"free space or choose another folder")
    return None


def inside_problem(root: str, name: str, key: str = "experiment") -> Optional[str]:
    """Why ``<root>/<name>`` is not a folder strictly inside ``root`` (absolute name, ``..``), or None."""
    if not name or not name.strip():
        return f"{key} is empty; give a name such as my_run"
    if os.path.isabs(os.path.expanduser(name)):
        return f"{key} '{name}' is an absolute path; it names a folder inside the output root, e.g. {key} my_run"
    root = os.path.abspath(os.path.expanduser(root))
    full = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, full]) != root or full == root:
        return (f"{key} '{name}' leads outside the output root {root} (no '..', not the root itself); "
                f"choose a plain name such as my_run, or change --output")
    return None


def _arg_type(problem: Callable[[str], Optional[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        msg = problem(text)
        if msg:
            raise argparse.ArgumentTypeError(msg)
        return text

    return parse


readable_file = _arg_type(readable_file_problem)
writable_folder = _arg_type(writable_folder_problem)


def _existing_folder_problem(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return f"folder not found: {path}"
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"folder {path} is not readable (permission denied)"
    return None


def _writable_file_problem(path: str) -> Optional[str]:
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name inside it"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable (permission denied); choose another file"
    return writable_folder_problem(os.path.dirname(os.path.abspath(path)) or ".", "folder")


existing_folder = _arg_type(_existing_folder_problem)
writable_file = _arg_type(_writable_file_problem)


# ------------------------------------------------------------------------------------------ last line of defence
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
}


def describe_os_error(err: OSError) -> str:
    """One line: the path(s), what failed and the fix."""
    path = err.filename if err.filename is not None else "?"
    if getattr(err, "filename2", None):
        path = f"{path} -> {err.filename2}"
    cause = _FIXES.get(err.errno, err.strerror or type(err).__name__)
    return f"cannot use {path}: {cause}"


def run_main(main: Callable[..., object], argv=None) -> int:
    """Call ``main(argv)`` for ``if __name__ == '__main__'``: an ``OSError`` prints one ``error:`` line naming
    the path (exit 1), a bad-input error (config, dataset, checkpoint, model) its message (exit 2)."""
    from models.factory import ModelError
    try:
        result = main(argv)
    except INPUT_ERRORS + (ModelError,) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


# ------------------------------------------------------------------------------------------ one grammar (docs/cli.md)
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NONE_WORDS = ("none", "null")


def parse_bool(text: str, flag: str = "", allow_none: bool = False) -> Optional[bool]:
    """``true|yes|on|1`` -> True, ``false|no|off|0`` -> False (``none|null`` -> None where allowed)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    if allow_none and word in NONE_WORDS:
        return None
    forms = "true or false" + (" (or none)" if allow_none else "")
    raise argparse.ArgumentTypeError(f"{flag + ': ' if flag else ''}expected {forms}, got {text!r}; the switch "
                                     f"forms are {flag or '--x'}, --no-{(flag or '--x')[2:]} and "
                                     f"{flag or '--x'} true|false")


class BoolFlag(argparse.Action):
    """A switch in the one grammar: ``--x``, ``--no-x``, ``--x true|false`` and ``--x=false`` (the value forms are
    rewritten by :class:`Parser` before argparse sees them, so a switch never swallows a positional argument).
    ``allow_none`` also takes ``--x none`` (a tri-state key whose default is "automatic")."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None, allow_none=False,
                 metavar=None):
        negatives = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--") and not s.startswith("--no-")]
        self.allow_none = allow_none
        super().__init__(list(option_strings) + negatives, dest, nargs=0, default=default, required=required,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        value = getattr(parser, "_bool_values", {}).pop(id(self), None) if option_string else None
        if value is None:
            value = not (option_string or "").startswith("--no-")
        setattr(namespace, self.dest, None if value == "none" else value)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings[:1] + [s for s in self.option_strings if s.startswith("--no-")][:1])


class DefaultsOnceFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text with the default appended once: not when the text already names it, nor for switches that are
    off, nor for empty or suppressed defaults. The ``--key_name`` spellings of ``--key-name`` are not listed."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        dashed = {s.replace("_", "-") for s in action.option_strings if "_" not in s}
        strings = [s for s in action.option_strings if "_" not in s or s.replace("_", "-") not in dashed]
        if action.nargs == 0:
            return ", ".join(strings)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{s} {metavar}" for s in strings)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, "", [], argparse.SUPPRESS) or action.nargs == 0
                and not isinstance(action, BoolFlag) or not action.option_strings):
            return text
        if isinstance(default, bool):
            default = "true" if default else "false"
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` speaking the one grammar of the entry points (docs/cli.md): defaults shown once,
    :meth:`add_bool` switches, :meth:`add_alias` old spellings that still work but stay out of ``-h``."""

    def __init__(self, *args, legacy: Optional[Callable[[List[str]], List[str]]] = None, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsOnceFormatter)
        super().__init__(*args, **kwargs)
        self.legacy = legacy  # rewrites an old spelling that a plain alias cannot express (e.g. a changed value)
        self.aliases: Dict[str, str] = {}  # old spelling -> the flag it is an alias of

    def add_bool(self, *flags, default=False, help="", allow_none=False, **kwargs):
        """A :class:`BoolFlag` switch (``--x``/``--no-x``/``--x true|false``)."""
        return self.add_argument(*flags, action=BoolFlag, default=default, help=help, allow_none=allow_none,
                                 **kwargs)

    def add_alias(self, *old, of: str, **kwargs):
        """Old spellings ``old`` of the flag ``of``: they still work (same dest and type unless ``kwargs`` say
        otherwise), hidden from ``-h``; :attr:`aliases` lists them (docs/cli.md, tests)."""
        target = next(a for a in self._actions if of in a.option_strings)
        if isinstance(target, BoolFlag) and "action" not in kwargs:
            kwargs.update(action=BoolFlag, allow_none=target.allow_none)
        elif "action" not in kwargs:
            kwargs.setdefault("type", target.type)
            kwargs.setdefault("nargs", target.nargs)
            kwargs.setdefault("choices", target.choices)
            if target.nargs == "?":
                kwargs.setdefault("const", target.const)
        kwargs.setdefault("default", argparse.SUPPRESS)
        action = self.add_argument(*old, dest=kwargs.pop("dest", target.dest), help=argparse.SUPPRESS, **kwargs)
        for flag in action.option_strings:
            self.aliases[flag] = of
        return action

    # the value forms of switches: '--x true' / '--x=false' become '--x' / '--no-x' before argparse parses
    def _bool_actions(self) -> Dict[str, BoolFlag]:
        return {s: a for a in self._actions if isinstance(a, BoolFlag) for s in a.option_strings
                if not s.startswith("--no-")}

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self.normalize(sys.argv[1:] if args is None else args), namespace)

    def normalize(self, args: Sequence[str]) -> List[str]:
        """``args`` in this parser's canonical spelling: old spellings rewritten (``legacy``), switches as
        ``--x`` / ``--no-x`` (a ``none`` value is kept aside for the switch's action)."""
        args = list(args)
        if self.legacy is not None:
            args = self.legacy(args)
        switches = self._bool_actions()
        takes_positionals = any(not a.option_strings for a in self._actions)
        out, i = [], 0
        self._bool_values = {}
        while i < len(args):
            token = args[i]
            if token == "--":
                out.extend(args[i:])
                break
            flag, eq, value = token.partition("=")
            action = switches.get(flag) if flag.startswith("--") else switches.get(token)
            if action is None:
                out.append(token)
                i += 1
                continue
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                nxt = args[i + 1].strip().lower()
                known = TRUE_WORDS + FALSE_WORDS + (NONE_WORDS if action.allow_none else ())
                if nxt in known or not takes_positionals:
                    value, eq = args[i + 1], "="
                    i += 1
            if eq:
                try:
                    parsed = parse_bool(value, flag, action.allow_none)
                except argparse.ArgumentTypeError as err:
                    self.error(str(err))
                token = flag if parsed is not False else f"--no-{flag[2:]}"
                if parsed is None:
                    self._bool_values[id(action)] = "none"
            out.append(token)
            i += 1
        return out


def hidden_flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """The old spellings of ``parser`` (and its subcommands) -> the flag each is an alias of."""
    out = dict(getattr(parser, "aliases", {}))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.update(hidden_flags(sub))
    return out

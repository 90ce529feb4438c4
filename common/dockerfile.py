"""Dockerfile parsing for image builds: the instructions Corral runs, each
checked with the line it came from. Pure: no I/O."""
from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field

MAX_LINES = 2000
RUNS = {"RUN"}
FILES = {"COPY", "ADD"}
META = {"ENV", "ARG", "WORKDIR", "USER", "LABEL", "CMD", "ENTRYPOINT", "EXPOSE"}
KNOWN = {"FROM"} | RUNS | FILES | META
VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}"
                    r"|([A-Za-z_][A-Za-z0-9_]*))")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DockerfileError(ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str  # the text after the keyword, continuation lines joined
    json_form: list[str] | None = None


@dataclass(frozen=True)
class Step:
    """A filesystem step after ARG/ENV substitution: `run` (argv), `copy`
    (sources, dest, chown) or `workdir` (made if absent), with the env, user
    and working directory in force there."""
    line: int
    op: str
    text: str
    argv: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dest: str = ""
    chown: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # ENV and ARG values in force
    user: str = "root"
    workdir: str = "/root"


@dataclass
class Plan:
    base: str
    steps: list[Step]
    env: dict[str, str]
    workdir: str
    user: str
    labels: dict[str, str]
    cmd: list[str] | None
    entrypoint: list[str] | None
    exposed: list[str]


def split_lines(text: str) -> list[Instruction]:
    """Join continuation lines, drop comments and blank lines."""
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise DockerfileError(MAX_LINES, f"more than {MAX_LINES} lines")
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # comments inside a continued instruction
        if not buf:
            start = n
        if s.endswith("\\"):
            buf.append(s[:-1])
            continue
        buf.append(s)
        out.append(_instruction(start, " ".join(p.strip() for p in buf if p.strip())))
        buf = []
    if buf:
        out.append(_instruction(start, " ".join(buf)))
    return out


def _instruction(line: int, text: str) -> Instruction:
    op, _, rest = text.partition(" ")
    op = op.upper()
    if op not in KNOWN:
        raise DockerfileError(line, f"unsupported instruction {op!r}; supported: "
                                    f"{', '.join(sorted(KNOWN))}")
    rest = rest.strip()
    form = None
    if rest.startswith("[") and op in RUNS | FILES | {"CMD", "ENTRYPOINT"}:
        try:
            form = json.loads(rest)
        except ValueError:
            form = None  # shell form that happens to start with "["
        if form is not None and (not isinstance(form, list)
                                 or not all(isinstance(a, str) for a in form)):
            raise DockerfileError(line, f"{op} in exec form takes a JSON array of strings")
    return Instruction(line, op, rest, form)


def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        have = values.get(name)
        if m.group(2) == "-":
            return have if have else m.group(3)
        if m.group(2) == "+":
            return m.group(3) if have else ""
        return have or ""
    return VAR_RE.sub(one, text)


def _pairs(ins: Instruction, values: dict[str, str]) -> dict[str, str]:
    """`K=V K2="v 2"` or the legacy `K V`."""
    try:
        words = shlex.split(ins.args, posix=True)
    except ValueError as e:
        raise DockerfileError(ins.line, f"{ins.op}: {e}") from None
    if not words:
        raise DockerfileError(ins.line, f"{ins.op} needs arguments")
    if "=" not in words[0]:
        if len(words) < 2:
            raise DockerfileError(ins.line, f"{ins.op} {words[0]} needs a value")
        pairs = {words[0]: " ".join(words[1:])}
    else:
        pairs = {}
        for w in words:
            k, eq, v = w.partition("=")
            if not eq:
                raise DockerfileError(ins.line, f"{ins.op}: {w!r} is not KEY=VALUE")
            pairs[k] = v
    for k in pairs:
        if not NAME_RE.match(k) and ins.op != "LABEL":
            raise DockerfileError(ins.line, f"{ins.op}: invalid name {k!r}")
    return {k: substitute(v, values) for k, v in pairs.items()}


def _command(ins: Instruction) -> list[str]:
    if ins.json_form is not None:
        return list(ins.json_form)
    if not ins.args:
        raise DockerfileError(ins.line, f"{ins.op} needs a command")
    return ["/bin/sh", "-c", ins.args]


def parse(text: str, build_args: dict[str, str] | None = None) -> Plan:
    """The build plan of a Dockerfile: one FROM first, then its steps."""
    ins = split_lines(text)
    given = dict(build_args or {})
    args: dict[str, str] = {}
    i = 0
    while i < len(ins) and ins[i].op == "ARG":  # ARGs before FROM feed FROM alone
        args.update(_arg(ins[i], given, args))
        i += 1
    if i >= len(ins) or ins[i].op != "FROM":
        raise DockerfileError(ins[i].line if i < len(ins) else 1,
                              "the first instruction must be FROM")
    words = substitute(ins[i].args, args).split()
    if words and words[0].startswith("--"):
        raise DockerfileError(ins[i].line, "FROM flags (such as --platform) are not supported")
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
        raise DockerfileError(ins[i].line, "FROM takes an image name (and optionally AS name)")
    plan = Plan(base=words[0], steps=[], env={}, workdir="/root", user="root", labels={},
                cmd=None, entrypoint=None, exposed=[])
    args = {}
    for it in ins[i + 1:]:
        _apply(plan, it, given, args)
    return plan


def _arg(ins: Instruction, given: dict[str, str], known: dict[str, str]) -> dict[str, str]:
    name, eq, default = ins.args.partition("=")
    name = name.strip()
    if not NAME_RE.match(name):
        raise DockerfileError(ins.line, f"ARG: invalid name {name!r}")
    value = given.get(name, substitute(default.strip().strip('"'), known) if eq else "")
    return {name: value}


def _apply(plan: Plan, ins: Instruction, given: dict[str, str], args: dict[str, str]) -> None:
    values = {**args, **plan.env}
    if ins.op == "FROM":
        raise DockerfileError(ins.line, "multi-stage builds (a second FROM) are not supported")
    if ins.op == "RUN":
        plan.steps.append(_step(ins, "run", values, plan, argv=_command(ins)))
    elif ins.op in FILES:
        plan.steps.append(_copy(ins, values, plan))
    elif ins.op == "ARG":
        args.update(_arg(ins, given, args))
    elif ins.op in ("ENV", "LABEL"):
        (plan.env if ins.op == "ENV" else plan.labels).update(_pairs(ins, values))
    elif ins.op == "WORKDIR":
        path = substitute(ins.args, values).strip()
        if not path:
            raise DockerfileError(ins.line, "WORKDIR needs a path")
        plan.workdir = posixpath.normpath(posixpath.join(plan.workdir, path))
        plan.steps.append(_step(ins, "workdir", values, plan, dest=plan.workdir))
    elif ins.op == "USER":
        user = substitute(ins.args, values).strip()
        if not user or " " in user:
            raise DockerfileError(ins.line, "USER takes one user (name or uid, optionally :group)")
        plan.user = user
    elif ins.op in ("CMD", "ENTRYPOINT"):
        setattr(plan, ins.op.lower(), _command(ins))
    elif ins.op == "EXPOSE":
        plan.exposed.extend(substitute(ins.args, values).split())


def _step(ins: Instruction, op: str, values: dict[str, str], plan: Plan, *,
          argv: list[str] | None = None, sources: list[str] | None = None, dest: str = "",
          chown: str | None = None) -> Step:
    """A filesystem step with the env, user and working directory in force."""
    return Step(ins.line, op, ins.args, argv=argv or [], sources=sources or [], dest=dest,
                chown=chown, env=dict(values), user=plan.user, workdir=plan.workdir)


def _copy(ins: Instruction, values: dict[str, str], plan: Plan) -> Step:
    words = list(ins.json_form) if ins.json_form is not None else ins.args.split()
    chown = None
    while words and words[0].startswith("--"):
        flag, _, val = words.pop(0).partition("=")
        if flag == "--chown" and val:
            chown = substitute(val, values)
        else:
            raise DockerfileError(ins.line, f"{ins.op}: unsupported flag {flag} "
                                            "(supported: --chown)")
    if len(words) < 2:
        raise DockerfileError(ins.line, f"{ins.op} needs a source and a destination")
    words = [substitute(w, values) for w in words]
    sources, dest = words[:-1], words[-1]
    for s in sources:
        if "://" in s:
            raise DockerfileError(ins.line, f"{ins.op}: URLs are not supported ({s})")
        norm = posixpath.normpath(s.lstrip("/")) or "."
        if norm == ".." or norm.startswith("../"):
            raise DockerfileError(ins.line, f"{ins.op}: {s} is outside the build context")
    if not dest.startswith("/"):
        dest = posixpath.join(plan.workdir, dest)  # keeps a trailing "/" (a directory)
    return _step(ins, "copy", values, plan, sources=sources, dest=dest, chown=chown)

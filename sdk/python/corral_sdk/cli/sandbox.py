"""`corral sandbox ...`: create, list, show, exec, cp, stop/start/pause/resume,
ttl, rm over the SDK."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from .. import NotFoundError, Sandbox


@contextlib.contextmanager
def progress(msg: str, stream: TextIO = sys.stderr) -> Iterator[None]:
    """A spinner with elapsed time on a TTY; silent otherwise."""
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    t0 = time.monotonic()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            stream.write(f"\r{frame} {msg} {time.monotonic() - t0:5.1f}s")
            stream.flush()
            if done.wait(0.1):
                break
        stream.write("\r\033[K")
        stream.flush()
    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()


def _pairs(items: list[str] | None, what: str) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise SystemExit(f"corral: {what} must be KEY=VALUE, got {it!r}")
        out[k] = v
    return out


def _sandbox(ref: str) -> Sandbox:
    """By id, else by name."""
    try:
        return Sandbox.connect(ref)
    except NotFoundError:
        found = Sandbox.list(name=ref)
        live = [s for s in found if s.state not in ("destroyed", "failed")] or found
        if not live:
            raise
        return live[0]


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def cmd_create(a: argparse.Namespace) -> int:
    with progress("creating sandbox"):
        sb = Sandbox.create(image=a.image, name=a.name, vcpus=a.vcpus, memory_mib=a.memory,
                            ttl_seconds=a.ttl, env=_pairs(a.env, "--env"),
                            metadata=_pairs(a.meta, "--meta"), egress=a.egress,
                            timeout=a.timeout)
    _print_json(sb.info) if a.json else print(sb.id)
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    boxes = Sandbox.list(state=a.state, metadata=_pairs(a.meta, "--meta"))
    if a.json:
        _print_json([b.info for b in boxes])
        return 0
    rows = [("ID", "NAME", "STATE", "IMAGE", "CREATED")] + [
        (b.id, b.name or "-", b.state, b.info.get("image", ""), b.info.get("created_at", ""))
        for b in boxes]
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    _print_json(_sandbox(a.id).info)
    return 0


def _writer(stream: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _exec_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--env", action="append", metavar="K=V")
    p.add_argument("--cwd")
    p.add_argument("--user", help="one of the image's users (default: root)")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("-i", "--stdin", action="store_true", help="send local stdin to the command")
    return p


def exec_argv(a: argparse.Namespace) -> list[str]:
    """The remote command; options written after the id are parsed into `a`."""
    argv = a.cmd
    if argv[:1] == ["--"]:
        argv = argv[1:]
    elif argv[:1] and argv[0].startswith("-") and "--" in argv:  # options after the id
        cut = argv.index("--")
        _exec_options(argparse.ArgumentParser(prog="corral sandbox exec ID")).parse_args(
            argv[:cut], namespace=a)
        argv = argv[cut + 1:]
    if not argv:
        raise SystemExit("usage: corral sandbox exec ID [options] -- COMMAND [ARGS...]")
    return argv


def cmd_exec(a: argparse.Namespace) -> int:
    argv = exec_argv(a)
    stdin = sys.stdin.read() if a.stdin else None
    res = _sandbox(a.id).exec(argv, env=_pairs(a.env, "--env"), cwd=a.cwd, timeout=a.timeout,
                              stdin=stdin, user=a.user, on_stdout=_writer(sys.stdout),
                              on_stderr=_writer(sys.stderr))
    if res.truncated:
        print("corral: output was truncated", file=sys.stderr)
    if res.timed_out:
        print(f"corral: command timed out after {a.timeout:g}s", file=sys.stderr)
        return 124
    return res.exit_code if res.exit_code is not None else 1


def _remote(spec: str) -> tuple[str, str] | None:
    ref, sep, path = spec.partition(":")
    return (ref, path) if sep and ref and "/" not in ref and path.startswith("/") else None


def cmd_cp(a: argparse.Namespace) -> int:
    src, dst = _remote(a.src), _remote(a.dst)
    if bool(src) == bool(dst):
        raise SystemExit("corral: exactly one of SRC and DST must be ID:/path")
    if src is not None:
        data = _sandbox(src[0]).files.read(src[1])
        if a.dst == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            out = Path(a.dst)
            (out / Path(src[1]).name if out.is_dir() else out).write_bytes(data)
        return 0
    assert dst is not None
    data = sys.stdin.buffer.read() if a.src == "-" else Path(a.src).read_bytes()
    path = dst[1] + os.path.basename(a.src) if dst[1].endswith("/") and a.src != "-" else dst[1]
    _sandbox(dst[0]).files.write(path, data)
    return 0


def cmd_lifecycle(a: argparse.Namespace) -> int:
    """stop, start, pause, resume: asks for it, then (with --wait) until the
    sandbox reaches the state it leads to."""
    sb = _sandbox(a.id)
    getattr(sb, a.verb)()
    want = {"stop": "stopped", "start": "running", "pause": "paused", "resume": "running"}
    if a.wait:
        deadline = time.monotonic() + a.timeout
        with progress(f"{a.verb} {sb.id}"):
            while sb.state != want[a.verb] and sb.state not in ("failed", "destroyed", "lost"):
                if time.monotonic() > deadline:
                    print(f"corral: {sb.id} still {sb.state} after {a.timeout:g}s",
                          file=sys.stderr)
                    return 1
                time.sleep(0.3)
                sb.refresh()
    print(f"{sb.id} {sb.state}")
    return 0 if not a.wait or sb.state == want[a.verb] else 1


def cmd_ttl(a: argparse.Namespace) -> int:
    sb = _sandbox(a.id).set_ttl(a.seconds)
    print(f"{sb.id} expires_at {sb.info.get('expires_at')}")
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    sb = _sandbox(a.id)
    with progress(f"destroying {sb.id}") if a.wait else contextlib.nullcontext():
        sb.kill(wait=a.wait, timeout=a.timeout)
    print(f"{sb.id} {sb.state}")
    return 0


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    sb = parsers["sandbox"] = sub.add_parser("sandbox", aliases=["sb"],
                                             help="create, use and delete sandboxes")
    s = sb.add_subparsers(dest="sandbox_cmd", required=True)
    c = s.add_parser("create", help="create a sandbox and wait until it runs; prints its id")
    c.add_argument("--image", default="default")
    c.add_argument("--name")
    c.add_argument("--vcpus", type=int, default=1)
    c.add_argument("--memory", type=int, default=256, help="MiB")
    c.add_argument("--ttl", type=int, help="seconds")
    c.add_argument("--env", action="append", metavar="K=V")
    c.add_argument("--meta", action="append", metavar="K=V")
    c.add_argument("--egress", action="store_true", help="allow outbound network")
    c.add_argument("--timeout", type=float, default=120)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_create)
    ls = s.add_parser("list", aliases=["ls"], help="list sandboxes")
    ls.add_argument("--state")
    ls.add_argument("--meta", action="append", metavar="K=V", help="only with this metadata")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)
    sh = s.add_parser("show", help="one sandbox as JSON")
    sh.add_argument("id", help="id or name")
    sh.set_defaults(fn=cmd_show)
    e = s.add_parser("exec", help="run a command, streaming its output; exits with its code")
    e.add_argument("id", help="id or name")
    _exec_options(e)
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    e.set_defaults(fn=cmd_exec)
    cp = s.add_parser("cp", help="copy a file: SRC DST, one of them ID:/path ('-' = stdio)")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.set_defaults(fn=cmd_cp)
    for verb, what in (("stop", "stop the VM, keeping its disk"), ("start", "start it again"),
                       ("pause", "pause it (memory kept)"), ("resume", "resume a paused one")):
        p = s.add_parser(verb, help=what)
        p.add_argument("id", help="id or name")
        p.add_argument("--wait", action="store_true", help="until it gets there")
        p.add_argument("--timeout", type=float, default=120)
        p.set_defaults(fn=cmd_lifecycle, verb=verb)
    t = s.add_parser("ttl", help="extend the lease: expire SECONDS from now")
    t.add_argument("id", help="id or name")
    t.add_argument("seconds", type=int)
    t.set_defaults(fn=cmd_ttl)
    rm = s.add_parser("rm", help="delete a sandbox")
    rm.add_argument("id", help="id or name")
    rm.add_argument("--wait", action="store_true", help="until it is destroyed")
    rm.add_argument("--timeout", type=float, default=120)
    rm.set_defaults(fn=cmd_rm)

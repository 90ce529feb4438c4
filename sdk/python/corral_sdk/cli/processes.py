"""`corral process ...` (background processes) and `corral shell` (a terminal
in a sandbox) over the SDK."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from typing import Any

from ..processes import SIGNALS
from .sandbox import _pairs, _print_json, _sandbox


def _command(a: argparse.Namespace) -> list:
    """The remote command; options written after the id are parsed into `a`."""
    argv = list(a.cmd)
    if argv[:1] == ["--"]:
        return argv[1:]
    if argv[:1] and argv[0].startswith("-"):
        cut = argv.index("--") if "--" in argv else len(argv)
        a.parser.parse_args([*argv[:cut], a.id], namespace=a)
        return argv[cut + 1:]
    return argv


def cmd_start(a: argparse.Namespace) -> int:
    argv = _command(a)
    if not argv:
        raise SystemExit("usage: corral process start ID [options] -- COMMAND [ARGS...]")
    print(_sandbox(a.id).processes.start(argv, env=_pairs(a.env, "--env"), cwd=a.cwd,
                                         user=a.user, tag=a.tag, timeout=a.timeout))
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    procs = _sandbox(a.id).processes.list()
    if a.json:
        _print_json([p.__dict__ for p in procs])
        return 0
    for p in procs:
        print(f"{p.pid:<8} {p.tag or '-':<16} {' '.join(p.cmd)}")
    return 0


def cmd_attach(a: argparse.Namespace) -> int:
    def out(stream: Any) -> Any:
        return lambda text: (stream.write(text), stream.flush())
    res = _sandbox(a.id).processes.wait(a.pid, on_stdout=out(sys.stdout), on_stderr=out(sys.stderr),
                                        on_pty=lambda b: os.write(1, b))
    return _status(res)


def _status(res: Any) -> int:
    """Its exit code; 128+N when signal N killed it (as a shell says)."""
    code = res.exit_code
    return 1 if code is None else code if code >= 0 else 128 - code


def cmd_signal(a: argparse.Namespace) -> int:
    _sandbox(a.id).processes.signal(a.pid, a.signal)
    return 0


def cmd_kill(a: argparse.Namespace) -> int:
    if not _sandbox(a.id).processes.kill(a.pid):
        print(f"corral: process {a.pid} is not running", file=sys.stderr)
        return 1
    return 0


def _pump(sb: Any, pid: int, stop: threading.Event) -> None:
    """Local stdin to the remote terminal; at its end, Ctrl-D."""
    try:
        while not stop.is_set():
            data = os.read(0, 4096)
            if not data:
                sb.processes.send_input(pid, b"\x04")
                return
            sb.processes.send_input(pid, data)
    except Exception:  # noqa: BLE001 - the shell has ended: nothing to type into
        return


def cmd_shell(a: argparse.Namespace) -> int:
    """A login shell (or CMD) on a PTY in the sandbox, this terminal in raw mode."""
    sb = _sandbox(a.id)
    cols, rows = shutil.get_terminal_size((80, 24))
    interactive = os.isatty(0)
    saved: list | None = None
    if interactive:
        import termios
        import tty
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    stop = threading.Event()

    def on_start(pid: int) -> None:
        if interactive and hasattr(signal, "SIGWINCH"):
            signal.signal(signal.SIGWINCH, lambda *_: sb.processes.resize(
                pid, *shutil.get_terminal_size((80, 24))))
        threading.Thread(target=_pump, args=(sb, pid, stop), daemon=True).start()
    try:
        argv = _command(a)
        res = sb.processes.run(argv or ["bash", "-l"], user=a.user, pty=(cols, rows),
                               env={"TERM": os.environ.get("TERM", "xterm-256color")},
                               on_start=on_start, on_pty=lambda b: os.write(1, b))
    finally:
        stop.set()
        if saved is not None:
            import termios
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    return _status(res)


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    pr = parsers["process"] = sub.add_parser(
        "process", aliases=["ps"], help="background processes in a sandbox")
    s = pr.add_subparsers(dest="process_cmd", required=True)
    st = s.add_parser("start", help="start a command in the background; prints its pid")
    st.add_argument("id", help="sandbox id or name")
    st.add_argument("--env", action="append", metavar="K=V")
    st.add_argument("--cwd")
    st.add_argument("--user", help="one of the image's users (default: root)")
    st.add_argument("--tag")
    st.add_argument("--timeout", type=float, help="kill it after SECONDS (default: never)")
    st.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    st.set_defaults(fn=cmd_start, parser=st)
    ls = s.add_parser("list", aliases=["ls"], help="the background processes that run")
    ls.add_argument("id", help="sandbox id or name")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)
    for verb, fn, what in (("attach", cmd_attach, "follow its output to its end; exits "
                            "with its code"),
                           ("kill", cmd_kill, "SIGKILL it"),
                           ("signal", cmd_signal, "send it a signal")):
        p = s.add_parser(verb, help=what)
        p.add_argument("id", help="sandbox id or name")
        p.add_argument("pid", type=int)
        if verb == "signal":
            p.add_argument("--signal", default="SIGTERM", choices=SIGNALS)
        p.set_defaults(fn=fn)
    sh = parsers["shell"] = sub.add_parser(
        "shell", help="a terminal in a sandbox (bash -l, or CMD); exits with its code")
    sh.add_argument("id", help="sandbox id or name")
    sh.add_argument("--user", help="one of the image's users (default: root)")
    sh.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    sh.set_defaults(fn=cmd_shell, parser=sh)

"""Dockerfile parsing: the instructions Corral runs, each error naming its line."""
from __future__ import annotations

import pytest

from common.dockerfile import DockerfileError, parse, split_lines, substitute

pytestmark = pytest.mark.unit


def test_continuations_comments_and_both_run_forms():
    plan = parse("# syntax comment\nFROM default\n\nRUN apt-get update && \\\n"
                 "    # a comment inside\n    apt-get install -y jq\n"
                 'RUN ["python3", "-c", "print(1)"]\n')
    assert plan.base == "default"
    assert [s.argv for s in plan.steps] == [
        ["/bin/sh", "-c", "apt-get update && apt-get install -y jq"],
        ["python3", "-c", "print(1)"]]
    assert [s.line for s in plan.steps] == [4, 7]


def test_env_arg_substitution_and_state_per_step():
    plan = parse('ARG BASE=default\nFROM $BASE\nARG VER=1.2\nENV A=1 B="two words"\n'
                 "ENV LEGACY value with spaces\nRUN echo $VER\nWORKDIR /srv\nWORKDIR app\n"
                 "USER nobody\nCOPY --chown=1000:1000 src/ ${A:-x}/\nENV A=3\n",
                 build_args={"VER": "9"})
    assert plan.base == "default"
    run, wd1, wd2, copy = plan.steps
    assert run.env == {"VER": "9", "A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert run.user == "root" and run.workdir == "/root"
    assert (wd1.dest, wd2.dest) == ("/srv", "/srv/app")
    assert copy.user == "nobody" and copy.chown == "1000:1000"
    assert copy.dest == "/srv/app/1/" and copy.sources == ["src/"]
    assert plan.env["A"] == "3" and plan.workdir == "/srv/app" and plan.user == "nobody"


def test_metadata_instructions():
    plan = parse('FROM default\nLABEL org.example.team="x y" tier=1\nEXPOSE 8080 9090/udp\n'
                 'CMD ["python3", "app.py"]\nENTRYPOINT /bin/run\n')
    assert plan.labels == {"org.example.team": "x y", "tier": "1"}
    assert plan.exposed == ["8080", "9090/udp"]
    assert plan.cmd == ["python3", "app.py"] and plan.entrypoint == ["/bin/sh", "-c", "/bin/run"]
    assert plan.steps == []


@pytest.mark.parametrize("text,line,needle", [
    ("FROM default\nRUN true\nHEALTHCHECK CMD true\n", 3, "unsupported instruction"),
    ("RUN true\n", 1, "first instruction must be FROM"),
    ("FROM default\nFROM default\n", 2, "multi-stage"),
    ("FROM default\nCOPY --from=builder /a /b\n", 2, "unsupported flag --from"),
    ("FROM default\nADD https://x.example/a /a\n", 2, "URLs are not supported"),
    ("FROM default\nCOPY ../../etc/passwd /x\n", 2, "outside the build context"),
    ("FROM default\nCOPY onlyone\n", 2, "a source and a destination"),
    ("FROM default\nENV\n", 2, "needs arguments"),
    ("FROM default\nENV 1BAD=x\n", 2, "invalid name"),
    ("FROM default\nUSER a b\n", 2, "USER takes one user"),
    ("FROM --platform=linux/arm64 default\n", 1, "not supported"),
    ('FROM default\nRUN ["sh", 1]\n', 2, "JSON array of strings"),
])
def test_errors_name_the_line(text, line, needle):
    with pytest.raises(DockerfileError) as e:
        parse(text)
    assert e.value.line == line and needle in str(e.value)
    assert str(e.value).startswith(f"line {line}:")


def test_substitution_forms():
    v = {"A": "1", "E": ""}
    assert substitute("$A ${A} ${B:-dflt} ${A:+set} ${B:+set} ${E:-empty}", v) == \
        "1 1 dflt set  empty"


def test_line_cap():
    with pytest.raises(DockerfileError, match="more than"):
        split_lines("RUN true\n" * 2001)

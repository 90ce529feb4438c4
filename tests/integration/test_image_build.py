"""Custom images built for real: Dockerfile steps run in build VMs (QEMU, the
test's own bridge, egress allowed only to this machine's package mirror and
resolver), layers cached by content key, OCI archives imported with the
agent injected, and sandboxes booted on the results.

One Dockerfile with an `apt-get install` is built once per module (the slow
part under TCG); the other builds reuse its layers or need no network."""
from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import pytest_asyncio

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters.images import (BuildError, BuildVmConfig, ImageBuilder,
                                                 ImageStore, bases_for, import_archive)
from services.host_agent.adapters.network import HostNetwork
from services.host_agent.adapters.network.bridge import NetworkConflict
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import ExecRequest, VmSpec
from services.host_agent.settings import host_resolver

from .oci_fixture import write_oci
from .vm_support import Recorder, require

pytestmark = [pytest.mark.integration, pytest.mark.vm, pytest.mark.net]

require(("nft", "ip", "qemu-system-x86_64", "qemu-img", "mkfs.ext4"), root=True)

MIRROR = "deb.debian.org"
DOCKERFILE = """\
FROM default
# a package from the distribution's mirror
RUN apt-get update -qq && \\
    apt-get install -y -qq --no-install-recommends jq >/dev/null
ENV GREETING="hello world" MODE=test
COPY app/ /srv/app/
WORKDIR /srv/app
RUN echo {last} > built.txt
"""


def context(dockerfile: str, files: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


APP = {"app/main.py": b"print('hi')\n"}


def _uplink() -> str:
    out = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True,
                         text=True, check=True).stdout
    routes = json.loads(out or "[]")
    if not routes:
        pytest.fail("no default route: the package mirror cannot be reached")
    return routes[0]["dev"]


class Env:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cib-", dir="/tmp"))
        self.bridge = "crli" + secrets.token_hex(2)
        self.rec = Recorder()
        self.net: HostNetwork | None = None

    async def start(self) -> None:
        try:
            mirrors = sorted({a[4][0] for a in socket.getaddrinfo(MIRROR, 80, socket.AF_INET)})
        except OSError as e:
            pytest.fail(f"{MIRROR} does not resolve here ({e}): builds need the mirror")
        self.resolver = host_resolver()
        allow = [f"{ip}/32" for ip in [*mirrors, *([self.resolver] if self.resolver else [])]]
        for _ in range(5):
            subnet = f"198.18.{secrets.randbelow(250) + 1}.0/24"
            net = HostNetwork(self.bridge, subnet, uplinks=[_uplink()], egress_allow=allow)
            try:
                await net.setup()
            except NetworkConflict:
                continue
            self.net = net
            break
        self.store = ImageStore(self.tmp / "store", ensure_image)
        self.driver = QemuDriver(self.tmp / "vms", network=self.net, templates=False,
                                 image_resolver=self.store.resolve)
        self.builder = ImageBuilder(self.driver, self.store, Recorder(),
                                    BuildVmConfig(memory_mib=1024, resolver=self.resolver))

    async def stop(self) -> None:
        await self.driver.close()
        if self.net is not None:
            await self.net.teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def build(self, dockerfile: str, files: dict[str, bytes] | None = None,
                    bases: dict[str, str] | None = None, log: list[str] | None = None,
                    scope: str = "org-a"):
        async def out(text: str) -> None:
            if log is not None:
                log.append(text)
        return await self.builder.build(self.builder.context(context(dockerfile, files)),
                                        bases_for(self.store)(bases or {}), out=out,
                                        scope=scope)

    async def run(self, ref: str, *cmd: str, user: str | None = None) -> str:
        sid = f"ib-{secrets.token_hex(4)}"
        await self.driver.start(VmSpec(sid, "img-test", image=ref), self.rec)
        try:
            r = await self.driver.exec(sid, ExecRequest(list(cmd), user=user, timeout_s=60))
            assert r.exit_code == 0, (cmd, r.stderr.decode(errors="replace"))
            return r.stdout.decode()
        finally:
            await self.driver.destroy(sid, self.rec.by_sid.get(sid, {}))

    def leftovers(self) -> list[str]:
        vms = [p.name for p in (self.tmp / "vms").glob("*") if p.is_dir()]
        tmp = [p.name for p in (self.store.root / "tmp").iterdir()]
        return vms + tmp


@pytest_asyncio.fixture(scope="module")
async def env():
    e = Env()
    try:
        await e.start()
        yield e
    finally:
        await e.stop()


@pytest_asyncio.fixture(scope="module")
async def built(env: Env):
    t0 = time.monotonic()
    log: list[str] = []
    res = await env.build(DOCKERFILE.format(last="first"), APP, log=log)
    return res, time.monotonic() - t0, "".join(log)


async def test_a_dockerfile_build_runs_its_package_env_file_and_workdir(env: Env, built):
    res, took, log = built
    assert [s["cached"] for s in res.steps] == [False] * 4, res.steps
    assert "Step 1/4 (line 3): RUN apt-get update" in log
    assert res.config["env"] == {"GREETING": "hello world", "MODE": "test"}
    assert res.config["cwd"] == "/srv/app"
    out = await env.run(res.ref, "sh", "-c", 'pwd; echo "$GREETING/$MODE"; cat main.py built.txt; '
                                             "echo '{\"a\": 7}' | jq .a")
    assert out.splitlines() == ["/srv/app", "hello world/test", "print('hi')", "first", "7"]
    print(f"\ncold build {took:.1f} s, image {res.size_bytes >> 20} MiB, steps {res.steps}")


async def test_changing_the_last_line_reruns_only_that_line(env: Env, built):
    first, took_first, _ = built
    t0 = time.monotonic()
    res = await env.build(DOCKERFILE.format(last="second"), APP)
    took = time.monotonic() - t0
    assert [s["cached"] for s in res.steps] == [True, True, True, False], res.steps
    assert res.digest != first.digest
    assert (await env.run(res.ref, "cat", "built.txt")).strip() == "second"
    # the same Dockerfile again: every step and the image itself are shared
    again = await env.build(DOCKERFILE.format(last="second"), APP)
    assert again.digest == res.digest and all(s["cached"] for s in again.steps)
    assert took < took_first / 2, (took, took_first)
    print(f"\nrebuild after a last-line change {took:.1f} s vs cold {took_first:.1f} s")


async def test_two_concurrent_builds_of_one_dockerfile_do_the_work_once(env: Env, built):
    df = DOCKERFILE.format(last="first") + f"RUN echo {secrets.token_hex(4)} > /tag\n"
    a, b = await asyncio.gather(env.build(df, APP), env.build(df, APP))
    assert a.digest == b.digest
    ran = [s["cached"] for s in a.steps][-1], [s["cached"] for s in b.steps][-1]
    assert sorted(ran) == [False, True], (a.steps, b.steps)  # one built it, one waited


async def test_layers_are_shared_within_an_org_only_and_steps_start_afresh(env: Env):
    df = ("FROM default\nRUN sh -c 'sleep 600 > /dev/null 2>&1 &'\n"
          f"RUN ! pgrep -x sleep && echo {secrets.token_hex(4)} > /tag\n")
    a = await env.build(df, scope="org-a")  # the second RUN fails if the sleep survived
    again = await env.build(df, scope="org-a")
    other = await env.build(df, scope="org-b")
    assert [s["cached"] for s in a.steps] == [False, False]
    assert [s["cached"] for s in again.steps] == [True, True] and again.digest == a.digest
    assert [s["cached"] for s in other.steps] == [False, False] and other.digest != a.digest


async def test_from_an_own_image_and_user(env: Env, built):
    res, _, _ = built
    df = "FROM base\nRUN useradd -m -u 1500 runner\nUSER runner\nWORKDIR /home/runner\n"
    child = await env.build(df, bases={"base": res.ref})
    assert child.config["user"] == "runner"
    out = await env.run(child.ref, "sh", "-c", "id -u; pwd; echo $HOME; jq --version")
    assert out.split() == ["1500", "/home/runner", "/home/runner", "jq-1.6"]
    with pytest.raises(BuildError, match="no image 'other'"):
        await env.build("FROM other\nRUN true\n")


async def test_a_failing_run_names_its_line_and_leaves_nothing(env: Env):
    images = set(os.listdir(env.store.root / "images"))
    with pytest.raises(BuildError) as e:
        await env.build("FROM default\nENV A=1\nRUN echo about to fail >&2; exit 7\n")
    assert e.value.line == 3 and "exited with 7" in e.value.reason
    assert "about to fail" in e.value.reason
    assert set(os.listdir(env.store.root / "images")) == images
    assert env.leftovers() == [] and not env.driver.launcher.vms


@pytest.mark.parametrize("dockerfile,files,line,needle", [
    ("FROM default\nRUN true\nHEALTHCHECK CMD true\n", None, 3, "unsupported instruction"),
    ("FROM default\nCOPY missing.txt /x\n", None, 2, "no such file"),
    ("FROM default\nCOPY ../etc/passwd /x\n", None, 2, "outside the build context"),
    ("FROM default\nADD https://example.com/x /x\n", None, 2, "URLs are not supported"),
    ("RUN true\n", None, 1, "first instruction must be FROM"),
])
async def test_bad_dockerfiles_fail_clearly(env: Env, dockerfile, files, line, needle):
    with pytest.raises(BuildError) as e:
        await env.build(dockerfile, files)
    assert e.value.line == line and needle in str(e.value), str(e.value)
    assert env.leftovers() == []


async def test_a_broken_context_is_refused(env: Env):
    with pytest.raises(BuildError, match="not a readable tar"):
        env.builder.context(b"this is not a tar archive at all" * 40)


async def test_an_oci_archive_imports_and_runs_with_the_agent_injected(env: Env):
    path = write_oci(env.tmp / "busybox.oci.tar",
                     {"Env": ["PATH=/bin", "FOO=bar"], "WorkingDir": "/home/app",
                      "User": "app", "Cmd": ["sh"]})
    res = await import_archive(env.store, ensure_image("default"), path)
    assert res.config["user"] == "app" and res.config["env"]["FOO"] == "bar"
    out = await env.run(res.ref, "sh", "-c", "id -u; pwd; echo $FOO; cat hello.txt; "
                                             "ls /; ls /cache; cat /etc/planted")
    lines = out.splitlines()
    assert lines[:4] == ["1000", "/home/app", "bar", "hello from the image"]
    assert "junk" not in lines  # whited out by the upper layer
    assert "new" in lines and "old" not in lines  # the opaque directory
    assert lines[-1] == "inside"  # a symlink to /etc resolved inside the image
    assert not Path("/etc/planted").exists()
    assert (await env.run(res.ref, "id", "-u", user="root")).strip() == "0"
    again = await import_archive(env.store, ensure_image("default"), path)
    assert again.digest == res.digest

"""Fast start: templates, restore-as-create, warm pool, live snapshot and fork.

Real QEMU microVMs on a test bridge (HostNetwork on `crls<hex>`, a random
198.18.x.0/24), so MAC/IP identity is real. At most 3 VMs run at once.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import json
import logging
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from services.host_agent.adapters.guest_image import ensure_image
from services.host_agent.adapters import procs
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import ExecRequest, VmSpec

from .vm_support import Recorder, kill_ours, require

pytestmark = [pytest.mark.integration, pytest.mark.vm]
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("corral.tests.snapshots")

require(("nft", "ip", "qemu-system-x86_64"), root=True)


def _host_nets():
    import ipaddress
    out = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True,
                                    text=True, check=True).stdout)
    return [ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            for link in out for a in link.get("addr_info", [])]


class Env:
    def __init__(self) -> None:
        self.r = secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
        self.rec = Recorder()
        self.net = None
        self.driver: QemuDriver | None = None

    async def start(self) -> None:
        import ipaddress

        from services.host_agent.adapters.network import HostNetwork
        from services.host_agent.adapters.network.bridge import NetworkConflict
        for _ in range(5):
            used = await asyncio.to_thread(_host_nets)
            for _ in range(200):
                subnet = ipaddress.IPv4Network(f"198.18.{random.randint(1, 254)}.0/24")
                if not any(subnet.overlaps(u) for u in used):
                    break
            net = HostNetwork(f"crls{self.r}", str(subnet), uplinks=[])
            try:
                await net.setup()
            except NetworkConflict:
                continue
            self.net = net
            break
        else:
            raise RuntimeError("no free subnet")
        self.driver = QemuDriver(self.tmp / "vms", network=self.net,
                                 template_root=self.tmp / "templates")

    async def gexec(self, sid: str, *cmd: str, driver: QemuDriver | None = None) -> str:
        r = await (driver or self.driver).exec(sid, ExecRequest(list(cmd), timeout_s=60))
        assert r.exit_code == 0, (sid, cmd, r)
        return r.stdout.decode()

    async def stop(self) -> list[str]:
        errors = []
        if self.driver is not None:
            for sid, res in list(self.rec.by_sid.items()):
                try:
                    await self.driver.destroy(sid, res)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"destroy {sid}: {e!r}")
            await self.driver.close()
            root = self.driver.state_root
            for name, pid in procs.find_ours(root).items():
                await kill_ours(pid, name, root)
        if self.net is not None:
            await self.net.teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return errors


@pytest.fixture(scope="module")
def image():
    return ensure_image("default")


@pytest_asyncio.fixture(scope="module")
async def env(image):
    e = Env()
    try:
        await e.start()
        yield e
    finally:
        errors = await e.stop()
        assert not errors, errors


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


async def identity(env: Env, sid: str, driver: QemuDriver | None = None) -> dict:
    out = await env.gexec(sid, "sh", "-c",
                          "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo;"
                          " cat /sys/class/net/eth0/address; date +%s.%N; hostname;"
                          " ip -4 -o addr show dev eth0; ip -4 route show default",
                          driver=driver)
    t_host = time.time()
    rnd, mac, clock, host, addr, route = out.splitlines()[:6]
    return {"random": rnd, "mac": mac.strip(), "clock_skew": abs(float(clock) - t_host),
            "hostname": host, "ip": addr.split()[3], "route": route}


async def test_template_restore_gives_each_clone_its_own_identity(env: Env):
    d = env.driver
    t0 = time.monotonic()
    tpl = await d.ensure_template("default", 1, 256)
    log.warning("template build %.1fs sizes %s", time.monotonic() - t0, tpl.manifest["sizes"])
    assert tpl.state.exists() and tpl.overlay.exists()
    # RAM is the template's `memory` file; the state stream holds devices only.
    assert tpl.memory.stat().st_size == 256 << 20
    assert tpl.state.stat().st_size < 1 << 20, tpl.manifest["sizes"]
    mem_digest = await asyncio.to_thread(_sha256, tpl.memory)
    assert await d.ensure_template("default", 1, 256) == tpl  # no second build
    infos = []
    for sid, name in (("rs-a", "clone-a"), ("rs-b", "clone-b")):
        t = time.monotonic()
        info = await d.start(VmSpec(sid, name, env={"WHO": sid}), env.rec)
        r = await d.exec(sid, ExecRequest(["true"]))
        first_exec_ms = (time.monotonic() - t) * 1000
        log.warning("%s: start_mode=%s ready %d ms, restore-to-first-exec %.0f ms",
                    sid, info.start_mode, info.boot_ms, first_exec_ms)
        assert r.exit_code == 0
        assert info.start_mode == "restore" and info.source == tpl.key
        infos.append(info)
    ids = [await identity(env, i.sandbox_id) for i in infos]
    a, b = ids
    assert a["random"] != b["random"]
    assert a["mac"] != b["mac"] and a["ip"] != b["ip"]
    for info, i in zip(infos, ids, strict=True):
        assert i["mac"] == info.mac and i["ip"] == f"{info.ip}/{env.net.prefix_len}"
        assert i["clock_skew"] < 2.0, i
        assert env.net.gateway in i["route"]
    assert (a["hostname"], b["hostname"]) == ("clone-a", "clone-b")
    assert (await env.gexec("rs-b", "sh", "-c", "echo $WHO")).strip() == "rs-b"
    # Clones map the template's RAM copy-on-write, from one write-sealed memfd:
    # guest writes (64 MiB here) stay private, and no QEMU can write it.
    mapped = set()
    for info in infos:
        maps = Path(f"/proc/{info.pid}/maps").read_text().splitlines()
        mapped |= {(m.split()[4], m.split()[5]) for m in maps if "memfd:tpl-" in m}
    assert len(mapped) == 1, mapped  # one inode, shared by both clones
    fd = await asyncio.to_thread(d.launcher.memory.sealed, tpl.memory)
    assert fcntl.fcntl(fd, 1034) & 0x8  # F_GET_SEALS has F_SEAL_WRITE
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)
    await env.gexec("rs-a", "python3", "-c", "b = bytearray(64 << 20); b[::4096] = b'x' * (16 << 10)")
    assert await asyncio.to_thread(_sha256, tpl.memory) == mem_digest
    # The host side is each clone's own lease (TAP + nft pinned to its MAC/IP).
    for info in infos:
        lease = env.net.lease(info.sandbox_id)
        assert (lease.mac, lease.ip) == (info.mac, info.ip)
    # Disks are separate copies of the template overlay.
    await env.driver.put_file("rs-a", "/root/only-in-a", b"a")
    r = await d.exec("rs-b", ExecRequest(["test", "-e", "/root/only-in-a"]))
    assert r.exit_code == 1
    # The clones reach their gateway over their own identity (ARP via the nft pins).
    out = await env.gexec("rs-a", "sh", "-c", f"ping -c1 -W2 {env.net.gateway} >/dev/null"
                          " 2>&1; echo $?; ip neigh show dev eth0")
    log.warning("ping from clone: %s", out)
    for sid in ("rs-a", "rs-b"):
        res = env.rec.by_sid.pop(sid)
        assert set(res) >= {"dir", "overlay", "qmp_socket", "agent_socket", "pid", "tap",
                            "lease"}
        await d.destroy(sid, res)
        assert not Path(res["dir"]).exists()


async def test_fork_of_live_sandbox(env: Env):
    d = env.driver
    info = await d.start(VmSpec("fk-src", "src"), env.rec)
    await d.put_file("fk-src", "/root/before.txt", b"written before the snapshot")
    snap = env.tmp / "snaps" / "s1"
    si = await d.snapshot("fk-src", snap)
    log.warning("snapshot: paused %d ms, state %d B, overlay %d B", si.paused_ms,
                si.state_bytes, si.overlay_bytes)
    assert await d.launcher.qmp("fk-src").status() == "running"
    await d.put_file("fk-src", "/root/after.txt", b"after")
    with pytest.raises(ValueError):
        await d.start(VmSpec("fk-bad", None, memory_mib=512, snapshot_dir=str(snap)), env.rec)
    assert "fk-bad" not in env.rec.by_sid or not env.rec.by_sid["fk-bad"]
    infos = await asyncio.gather(*(d.start(VmSpec(f"fk-{i}", f"fork-{i}",
                                                  snapshot_dir=str(snap)), env.rec)
                                   for i in range(2)))
    ids = []
    for fi in infos:
        assert fi.start_mode == "restore" and fi.source == str(snap.resolve())
        assert (await d.get_file(fi.sandbox_id, "/root/before.txt")) == \
            b"written before the snapshot"
        r = await d.exec(fi.sandbox_id, ExecRequest(["test", "-e", "/root/after.txt"]))
        assert r.exit_code == 1
        ids.append(await identity(env, fi.sandbox_id))
    src = await identity(env, "fk-src")
    assert len({i["random"] for i in ids + [src]}) == 3
    assert len({i["ip"] for i in ids + [src]}) == 3
    assert len({i["mac"] for i in ids + [src]}) == 3
    assert all(i["clock_skew"] < 2.0 for i in ids)
    for sid in ["fk-src", "fk-0", "fk-1"]:
        await d.destroy(sid, env.rec.by_sid.pop(sid))
    assert info.pid and not procs.is_ours(info.pid, "fk-src", d.state_root)


async def test_warm_pool_hit_refill_and_reconcile(env: Env):
    root = env.tmp / "poolvms"
    d = QemuDriver(root, network=env.net, template_root=env.tmp / "templates",
                   warm_pool={("default", 1, 256): 1})
    rec = Recorder()
    fresh = None
    try:
        await d.wait_pool_ready(180)
        t = time.monotonic()
        info = await d.start(VmSpec("pl-a", "pooled", egress=False), rec)
        r = await d.exec("pl-a", ExecRequest(["true"]))
        log.warning("pool assignment to first exec %.0f ms (ready %d ms)",
                    (time.monotonic() - t) * 1000, info.boot_ms)
        assert info.start_mode == "pool" and r.exit_code == 0
        ident = await identity(env, "pl-a", d)
        assert ident["mac"] == info.mac and ident["ip"].startswith(info.ip + "/")
        assert ident["hostname"] == "pooled" and ident["clock_skew"] < 2.0
        res = dict(rec.by_sid["pl-a"])
        assert res["dir"] == str(root / "pl-a") and (root / "pl-a").is_dir()
        assert await d.is_alive("pl-a", res)
        stats = d.pool_stats()["default/1/256"]
        assert stats["hits"] == 1
        await d.wait_pool_ready(180)  # refilled in the background
        assert d.pool_stats()["default/1/256"]["ready"] == 1
        # A restarted agent adopts the pooled sandbox and kills the unassigned pool VM.
        fresh = QemuDriver(root, network=env.net, template_root=env.tmp / "templates",
                           templates=False)
        pool_vm = next(pv.vm for st in d.pool.classes.values() for pv in st.ready)
        for vm in d.launcher.vms.values():  # "crash" of the first agent: its channels go away
            await vm.agent.close()
            await vm.qmp.close()
        d.launcher.vms.clear()
        report = await fresh.reconcile({"pl-a": res}, rec)
        assert report.adopted == ["pl-a"], report
        assert pool_vm.vm_name in report.killed_unrecorded
        assert await procs.wait_exit(pool_vm.pid, 10)
        assert (await fresh.exec("pl-a", ExecRequest(["echo", "adopted"]))).stdout == b"adopted\n"
        await fresh.destroy("pl-a", res)
        assert not await fresh.is_alive("pl-a", res)
        assert not (root / "pl-a").exists()
        assert procs.find_ours(root.resolve()) == {}
    finally:
        for sid, res in rec.by_sid.items():
            if res:
                await (fresh or d).destroy(sid, res)
        await d.close()
        if fresh is not None:
            await fresh.close()
        left = procs.find_ours(root.resolve())
        for name, pid in left.items():
            await kill_ours(pid, name, root.resolve())
        assert not left


# -- template store behaviour (no network) -------------------------------------------
@pytest.fixture
def plain_root(tmp_path_factory) -> Path:
    return Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))


def changed_kernel_resolver(tmp: Path):
    base = ensure_image("default")
    k = tmp / "vmlinux-changed"
    shutil.copyfile(base.kernel, k)
    return lambda name: replace(base, kernel=k)


async def test_template_key_change_rebuilds_and_stale_is_not_used(plain_root: Path):
    tr = plain_root / "templates"
    d1 = QemuDriver(plain_root / "vms", template_root=tr)
    d2 = QemuDriver(plain_root / "vms2", template_root=tr,
                    image_resolver=changed_kernel_resolver(plain_root))
    rec = Recorder()
    try:
        old = await d1.ensure_template()
        assert await d2.templates.find() is None  # a different kernel: stale
        new = await d2.ensure_template()
        assert new.key != old.key and new.dir != old.dir
        assert not old.dir.exists()  # pruned: never used again
        assert await d1.templates.find() is None
        info = await d2.start(VmSpec("kc-a", None), rec)
        assert info.start_mode == "restore" and info.source == new.key
        await d2.destroy("kc-a", rec.by_sid["kc-a"])
    finally:
        await d1.close()
        await d2.close()
        shutil.rmtree(plain_root, ignore_errors=True)


BUILDER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from services.host_agent.adapters.qemu import QemuDriver
    async def main():
        await QemuDriver({root!r}, template_root={tr!r}).ensure_template()
        print("BUILT", flush=True)
    asyncio.run(main())
""")


async def test_killed_builder_leaves_nothing_published(plain_root: Path):
    root, tr = plain_root / "vms", plain_root / "templates"
    code = BUILDER.format(repo=str(REPO), root=str(root), tr=str(tr))
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # Kill it while its template VM is booting (the build is under way).
        while not any(n.startswith("tpl-") for n in procs.find_ours(root.resolve())):
            assert child.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        child.kill()
        await child.wait()
        published = [p for p in tr.iterdir() if not p.name.startswith(".")]
        assert published == [], published
        d = QemuDriver(root, template_root=tr)
        try:
            assert await d.templates.find() is None
            t = await d.ensure_template()
            assert t.state.exists()
            assert [p.name for p in tr.iterdir() if p.name.startswith(".build-")] == []
            assert procs.find_ours(root.resolve()) == {}  # the orphan builder VM is gone
        finally:
            await d.close()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        for name, pid in procs.find_ours(root.resolve()).items():
            await kill_ours(pid, name, root.resolve())
        shutil.rmtree(plain_root, ignore_errors=True)

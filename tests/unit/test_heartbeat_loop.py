"""The host agent's heartbeat loop against a bus that stalls: a heartbeat is
given one interval to be stored, so one stuck in an outage never holds back
the next (a 10 s wait once kept a host silent for 10 s after every NATS
restart, past its 3-interval timeout), and a slow inventory never delays them."""
import asyncio
import itertools
from types import SimpleNamespace

from contracts.host import HostHeartbeat, HostInventory
from services.host_agent.entrypoints.heartbeat import heartbeat_loop

INTERVAL = 0.1


class StallingBus:
    """Every publish hangs until its timeout while `down`; inventories take
    `inventory_s` even when up."""

    def __init__(self) -> None:
        self.down = True
        self.inventory_s = 0.0
        self.beats: list[float] = []  # when a heartbeat was stored
        self.inventories: list[float] = []
        self.timeouts: list[float] = []
        self.jetstream = SimpleNamespace(consumer_info=self._no_info)

    async def _no_info(self, *_a):
        raise ConnectionError("no JetStream")

    async def publish(self, msg, subject=None, timeout_s: float = 10) -> int:
        loop = asyncio.get_running_loop()
        self.timeouts.append(timeout_s)
        if self.down:
            await asyncio.sleep(timeout_s)
            raise TimeoutError
        if isinstance(msg, HostInventory):
            await asyncio.sleep(self.inventory_s)
            self.inventories.append(loop.time())
        elif isinstance(msg, HostHeartbeat):
            self.beats.append(loop.time())
        return 1


def agent(bus: StallingBus):
    settings = SimpleNamespace(heartbeat_interval_s=INTERVAL, inventory_interval_s=0.3,
                               capacity_vcpus=4, capacity_memory_mib=4096, max_sandboxes=8,
                               hostname="h")
    service = SimpleNamespace(usage=lambda: (0, 0, 0), images=None,
                              records=SimpleNamespace(inventory=lambda: []))
    driver = SimpleNamespace(accel="fake", pool_stats=lambda: {})
    return SimpleNamespace(settings=settings, bus=bus, service=service, driver=driver,
                           host_id="h-1")


async def test_heartbeats_resume_at_once_when_the_bus_comes_back_and_never_wait_for_inventories():
    bus, stop = StallingBus(), asyncio.Event()
    loop_task = asyncio.ensure_future(heartbeat_loop(agent(bus), stop))  # type: ignore[arg-type]
    await asyncio.sleep(1.0)  # an outage of ten intervals
    assert bus.beats == [] and max(bus.timeouts) <= INTERVAL
    bus.down, bus.inventory_s = False, 1.0  # back; its first inventory is slow
    back = asyncio.get_running_loop().time()
    await asyncio.sleep(1.5)
    stop.set()
    await loop_task
    # bounds far from what the faults would give (10 s; the inventory's 1 s),
    # loose enough for a loaded machine
    assert bus.beats and bus.beats[0] - back <= 0.5, bus.beats[0] - back
    gaps = [b - a for a, b in itertools.pairwise(bus.beats)]
    assert max(gaps) < 0.6, gaps  # the slow inventory held none back
    assert bus.inventories and bus.inventories[0] - back >= 1.0  # sent, beside them

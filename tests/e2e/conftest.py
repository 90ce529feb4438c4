import contextlib
import os
import secrets

import pytest

from corral.devstack import DevStack

from .stack import Api


def e2e_driver() -> str:
    """Real QEMU microVMs unless told otherwise."""
    return os.environ.get("CORRAL_E2E_DRIVER", "qemu")


def e2e_env(driver: str) -> dict[str, str]:
    if driver == "fake":  # the FAKE driver's "VMs" are idle processes: capacity is free
        return {"CORRAL_CAPACITY_VCPUS": "128", "CORRAL_CAPACITY_MEMORY_MIB": "131072",
                "CORRAL_MAX_SANDBOXES": "128"}
    # own bridge and test-range subnet, so a running dev stack is never touched
    third = secrets.randbelow(250) + 1
    return {"CORRAL_CAPACITY_VCPUS": "16", "CORRAL_MAX_SANDBOXES": "12",
            "CORRAL_BRIDGE": "crl" + secrets.token_hex(3), "CORRAL_SUBNET": f"198.18.{third}.0/24"}


def make_stack(path, driver: str | None = None, env: dict[str, str] | None = None,
               store: str = "sqlite") -> DevStack:
    driver = driver or e2e_driver()
    return DevStack(path, driver=driver, store=store, extra_env={**e2e_env(driver), **(env or {})})


@contextlib.contextmanager
def running_stack(path, driver: str | None = None, env: dict[str, str] | None = None,
                  store: str = "sqlite"):
    st = make_stack(path, driver, env, store)
    try:
        st.start(timeout_s=180)
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as st:
        yield st


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack.api_url, stack.creds.api_key)


@pytest.fixture(scope="module")
def admin(stack):
    return Api(stack.api_url, stack.creds.admin_key)

import os

import pytest

from corral.devstack import DevStack

from .stack import Api


def e2e_driver() -> str:
    return os.environ.get("CORRAL_E2E_DRIVER", "fake")


def e2e_env() -> dict[str, str]:
    """A host big enough for the scenarios (the fake driver's VMs cost nothing)."""
    if e2e_driver() == "fake":
        return {"CORRAL_CAPACITY_VCPUS": "128", "CORRAL_CAPACITY_MEMORY_MIB": "131072",
                "CORRAL_MAX_SANDBOXES": "128"}
    return {"CORRAL_CAPACITY_VCPUS": "16", "CORRAL_MAX_SANDBOXES": "12"}


def make_stack(path) -> DevStack:
    return DevStack(path, driver=e2e_driver(), extra_env=e2e_env())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = make_stack(tmp_path_factory.mktemp("stack"))
    try:
        st.start()
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack.api_url, stack.creds.api_key)


@pytest.fixture(scope="module")
def admin(stack):
    return Api(stack.api_url, stack.creds.admin_key)

"""Red team on the Ray executor (issue 16): addresses a careless user types, coordinators
that share one executor, what workers forward. Real sockets and a real local Ray.
"""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("ray")

from bridge import ConfigurationError, NetworkError
from host.ray_executor import RayExecutor

# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:0",
                                     "127.0.0.1:\u0663", "::1:6379"])
def test_an_address_with_no_port_ray_could_use_is_refused_as_configuration(
        address: str) -> None:
    """A port out of range is no port: Python's resolver would silently wrap 99999 to
    34463 and probe that one; a digit that is not ASCII is not one Ray reads; an IPv6
    address without brackets is ambiguous (Ray refuses it)."""
    with pytest.raises(ConfigurationError.InvalidValue) as caught:
        RayExecutor(address)
    assert address in str(caught.value)


def test_a_bracketed_ipv6_address_is_probed_at_that_address() -> None:
    """``[::1]:port`` (how Ray writes an IPv6 address) is probed at ``::1``, not looked up
    as a host name called ``[::1]``."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = sock.getsockname()[1]
    address = f"[::1]:{port}"
    with pytest.raises(NetworkError.Connection) as caught:
        RayExecutor(address).connect()
    assert address in str(caught.value)
    assert "refused" in str(caught.value).lower()

"""Option parsing that needs no server: expert ranges, client options."""

import pytest

from moe.errors import MoEError
from moe_client import MoEClient
from serving.server import parse_expert_range


def test_expert_ranges():
    assert parse_expert_range("0-3") == [0, 1, 2, 3]
    assert parse_expert_range("4-5,1") == [1, 4, 5]
    with pytest.raises(MoEError):
        parse_expert_range("6-9")
    with pytest.raises(MoEError):
        parse_expert_range("x")


def test_bad_options():
    with pytest.raises(ValueError, match="protocol"):
        MoEClient(protocol="ftp")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        MoEClient().classify(["ok", 3])

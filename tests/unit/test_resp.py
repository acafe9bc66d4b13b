"""The linear-time packer writes exactly the bytes redis-py's own packer writes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from mesh.resp import FastPackConnection

_ARG = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary(max_size=20).map(memoryview),
    st.binary(max_size=20).map(bytearray),
)


def _reference(*args: object) -> bytes:
    return b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))


@given(
    st.sampled_from(["GEOADD", "HSET", b"ZADD", "CONFIG GET", b"CLIENT LIST"]),
    st.lists(_ARG, max_size=300),
)
def test_packs_like_redis_py(name: object, args: list[object]) -> None:
    packed = FastPackConnection().pack_command(name, *args)
    assert len(packed) == 1
    assert packed[0] == _reference(name, *args)


def test_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(DataError):
        FastPackConnection().pack_command("SET", "k", True)
    with pytest.raises(DataError):
        FastPackConnection().pack_command("SET", "k", None)

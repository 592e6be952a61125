import numpy as np
import pytest

from convert.deepcompression import LAYERS, NetFile, NetFormatError, decode_net, encode_net


@pytest.fixture(scope="module")
def net_bytes(dc_net_file):
    return dc_net_file.read_bytes()


def test_round_trip_is_byte_identical(net_bytes):
    assert len(net_bytes) == 675_763
    net = decode_net(net_bytes)
    assert encode_net(net) == net_bytes
    # and from the dense weights with the release's codebooks
    again = NetFile.from_state_dict(net.state_dict(), [layer.codebook for layer in net.layers])
    assert encode_net(again) == net_bytes


def test_decoded_weights_are_plausible(net_bytes):
    net = decode_net(net_bytes)
    state = net.state_dict()
    assert list(state)[0] == "features.0.weight" and state["classifier.1.weight"].shape == (1000, 512, 1, 1)
    weights = sum(np.prod(shape) for _, shape in LAYERS)
    assert 0.30 < net.nonzero / weights < 0.36  # about 33% of the weights survive pruning
    assert all(layer.codebook[0] == 0.0 for layer in net.layers)


def test_truncated_file(net_bytes):
    with pytest.raises(NetFormatError, match="truncated"):
        decode_net(net_bytes[:-10])
    with pytest.raises(NetFormatError, match="truncated"):
        decode_net(net_bytes[:50])


def test_trailing_bytes(net_bytes):
    with pytest.raises(NetFormatError, match="3 trailing bytes"):
        decode_net(net_bytes + b"abc")


def test_entries_past_the_tensor(net_bytes):
    # make conv1's first gap huge by setting every gap nibble of conv1 to 15
    data = bytearray(net_bytes)
    nz = int(np.frombuffer(net_bytes[:4], "<u4")[0])
    start = 26 * 4 + 256 * 4 + 96 * 4 + nz
    data[start:start + (nz + 1) // 2] = b"\xff" * ((nz + 1) // 2)
    with pytest.raises(NetFormatError, match="past the tensor"):
        decode_net(bytes(data))


def test_header_count_larger_than_tensor(net_bytes):
    data = bytearray(net_bytes)
    data[0:4] = (10**6).to_bytes(4, "little")
    with pytest.raises(NetFormatError, match="entries"):
        decode_net(bytes(data))

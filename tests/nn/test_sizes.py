"""Layer sizes from --set values."""
import pytest

from refgen.nn import parse_hidden


@pytest.mark.parametrize("value,sizes", [
    (64, (64,)), (64.0, (64,)), ([512, 256], (512, 256)), ((3,), (3,)), ("512,256", (512, 256)),
    (" 500, 500 ", (500, 500)), ("(500, 500)", (500, 500)), ("[8,4]", (8, 4)), ("7", (7,)), ([], ()),
])
def test_parse_hidden(value, sizes):
    assert parse_hidden(value) == sizes


@pytest.mark.parametrize("bad", ["64,x", [0, 4], -3, None])
def test_parse_hidden_refuses(bad):
    with pytest.raises(ValueError, match="sizes"):
        parse_hidden(bad)

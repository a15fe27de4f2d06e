import pytest

from chatstream_lab.stats import percentile, rate, window_rate


def test_percentile_interpolates_and_handles_edges():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert percentile(list(range(101)), 95) == pytest.approx(95.0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_rate_never_divides_by_zero():
    assert rate(10, 2) == 5
    assert rate(10, 0) == 0.0


def test_window_rate_spreads_tokens_over_the_span():
    # 100 tokens over [0, 10]; window [5, 10] holds half of them
    assert window_rate([(0.0, 10.0, 100)], now=10.0, window_s=5.0) == pytest.approx(10.0)
    # outside the window
    assert window_rate([(0.0, 1.0, 100)], now=10.0, window_s=5.0) == 0.0
    # instantaneous span counts whole
    assert window_rate([(9.0, 9.0, 50)], now=10.0, window_s=5.0) == pytest.approx(10.0)
    # two concurrent requests add up
    spans = [(5.0, 10.0, 50), (5.0, 10.0, 50)]
    assert window_rate(spans, now=10.0, window_s=5.0) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        window_rate([], now=0.0, window_s=0)

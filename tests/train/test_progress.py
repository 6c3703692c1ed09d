"""The training bar shows on a terminal only."""
import io

from loopgolf.train.progress import TrainProgress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_tty_and_nothing_elsewhere():
    tty = _Tty()
    bar = TrainProgress(stream=tty)
    assert bar.enabled
    for step in range(1, 5):
        bar.update(step / 4, step, 5.0 - step, 1234.0)
    bar.close()
    out = tty.getvalue()
    assert "100%" in out and "step 4 loss 1.0000 1,234 tok/s" in out
    piped = io.StringIO()
    quiet = TrainProgress(stream=piped)
    assert not quiet.enabled
    quiet.update(0.5, 1, 2.0, 10.0)
    quiet.close()
    assert piped.getvalue() == ""

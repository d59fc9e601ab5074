"""The daemon's log handler: access lines wait in a list and keep their order."""

from __future__ import annotations

import io
import logging

from tusd_py.http.logs import BufferedStderrHandler


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": message, "levelno": level,
                                  "levelname": logging.getLevelName(level), "name": "t"})


def test_access_lines_come_before_a_later_record_and_reach_the_stream_on_flush() -> None:
    handler = BufferedStderrHandler()
    handler.stream = out = io.StringIO()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.write_line("first\n")
    handler.write_line("second\n")
    assert out.getvalue() == ""  # waiting in the list
    handler.handle(_record("a warning", logging.WARNING))
    assert out.getvalue() == "first\nsecond\na warning\n"
    handler.write_line("third\n")
    handler.flush()
    assert out.getvalue().endswith("a warning\nthird\n")


def test_a_full_list_of_access_lines_is_written_without_a_flush() -> None:
    handler = BufferedStderrHandler()
    handler.stream = out = io.StringIO()
    for n in range(BufferedStderrHandler.MAX_LINES):
        handler.write_line(f"{n}\n")
    assert out.getvalue().splitlines() == [str(n) for n in range(BufferedStderrHandler.MAX_LINES)]

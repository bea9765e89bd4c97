"""Per-class rate alarms: raised when a class's share of the frames judged over a window passes a
set value, cleared when it falls back under it.

    monitor = AlarmMonitor({4: 0.2}, window_s=300, min_frames=20, url="http://127.0.0.1:9000/hook")
    monitor.check(log, line="line-1", now=time.time())     # after each recorded batch

An alarm is a row in the log's ``alarms`` table (the page shows the open ones as a banner). With
``url`` set, raising one also POSTs it there as JSON, on a thread, so a slow or dead receiver
never holds up the line; the outcome (``200`` or the error) is written back on the alarm's row.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping

from steel_defect.constants import CLASS_IDS

log = logging.getLogger(__name__)

POST_TIMEOUT_S = 5.0


def parse_rule(text: str) -> tuple[int, float]:
    """``CLASS:RATE`` (``4:0.2``: class 4 on more than a fifth of the frames) -> (4, 0.2)."""
    class_text, sep, rate_text = text.partition(":")
    try:
        class_id, rate = int(class_text), float(rate_text)
    except ValueError:
        class_id, rate = 0, -1.0
    if not sep or class_id not in CLASS_IDS or not 0 < rate <= 1:
        raise ValueError(
            f"--alarm {text!r}: expected CLASS:RATE, a class in {list(CLASS_IDS)} and a rate in (0, 1]"
        )
    return class_id, rate


class AlarmMonitor:
    """Rules ``{class_id: rate}`` over the last ``window_s`` seconds, once ``min_frames`` frames
    are in the window (a rate of 1 in 2 frames says nothing)."""

    def __init__(
        self,
        rules: Mapping[int, float],
        window_s: float = 300.0,
        min_frames: int = 20,
        url: str | None = None,
    ):
        if window_s <= 0 or min_frames < 1:
            raise ValueError("the alarm window must be positive and min_frames at least 1")
        self.rules, self.window_s, self.min_frames, self.url = dict(rules), window_s, min_frames, url
        self.posts: list[threading.Thread] = []

    def check(self, inspection_log, line: str, now: float) -> list[dict]:
        """Raise and clear alarms for ``line``; the alarms raised by this call."""
        opened = {a["class_id"]: a for a in inspection_log.open_alarms(line)}
        raised = []
        for class_id, threshold in self.rules.items():
            total, hits = inspection_log.window_rate(line, class_id, now - self.window_s)
            rate = hits / total if total else 0.0
            active = opened.get(class_id)
            if active is None and total >= self.min_frames and rate >= threshold:
                alarm = {
                    "line": line,
                    "class_id": class_id,
                    "threshold": threshold,
                    "window_s": self.window_s,
                    "rate": rate,
                    "frames": total,
                    "raised_at": now,
                }
                alarm["id"] = inspection_log.raise_alarm(**alarm)
                log.warning(
                    "alarm on %s: class %d on %.0f%% of the last %d frames (limit %.0f%%)",
                    line, class_id, 100 * rate, total, 100 * threshold,
                )  # fmt: skip
                raised.append(alarm)
                if self.url:
                    self._post(inspection_log, alarm)
            elif active is not None and rate < threshold:
                inspection_log.clear_alarm(active["id"], now)
        return raised

    def _post(self, inspection_log, alarm: dict) -> None:
        def send():
            body = json.dumps({"event": "alarm", **alarm}).encode()
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
                    outcome = str(response.status)
            except urllib.error.HTTPError as err:
                outcome = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError) as err:
                outcome = f"failed: {getattr(err, 'reason', err)}"
            try:
                inspection_log.note_alarm(alarm["id"], outcome)
            except Exception as err:  # the loop reports a log that cannot be written; this is a note
                log.error("alarm %d: cannot note the POST's outcome (%s)", alarm["id"], err)

        thread = threading.Thread(target=send, name=f"alarm-post-{alarm['id']}", daemon=True)
        thread.start()
        self.posts = [t for t in self.posts if t.is_alive()] + [thread]

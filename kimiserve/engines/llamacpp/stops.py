"""Turning token bytes into text deltas: whole UTF-8 characters, stop strings held back and cut.

Token pieces are bytes, and one character may span several tokens; an incremental UTF-8
decoder keeps the incomplete tail until it completes (invalid bytes become U+FFFD; a tail
still incomplete when generation ends is dropped). A stop
string may also span tokens: the text that could still become a stop string is held back, and
released as soon as it no longer can.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._pending = ""
        self.stopped = False
        self.stopped_by = ""  # the stop string found
        self.rest = ""  # the text after it that had been decoded already

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit (maybe empty).

        After a stop string is found, `stopped` is set and the text before it is returned.
        """
        if self.stopped:
            return ""
        return self._scan(self._pending + self._decoder.decode(data), final=False)

    def flush(self) -> str:
        """The end of generation: release the held-back text (an unfinished stop prefix).

        The bytes of a character cut off by the end of generation are dropped.
        """
        if self.stopped:
            return ""
        return self._scan(self._pending, final=True)

    def _scan(self, text: str, *, final: bool) -> str:
        if not self._stops:
            self._pending = ""
            return text
        cut = -1
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
                self.stopped_by = stop
        if cut != -1:
            self.stopped = True
            self._pending = ""
            self.rest = text[cut + len(self.stopped_by) :]
            return text[:cut]
        hold = 0 if final else self._holdback(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best

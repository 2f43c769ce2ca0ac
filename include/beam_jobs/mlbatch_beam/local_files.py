"""Local files matching a pattern exactly as Beam's FileSystems.match finds them, without importing Beam.

Why: mlbatch_beam.shards lists a job's input before starting its shards; importing Beam for that
(~1.2 s here) was paid serially on every sharded step. Checked against FileSystems.match in
tests/beam/test_shards.py.
"""
from __future__ import annotations

import os
import re


def local_matches(pattern: str) -> dict[str, int]:
    """Beam's LocalFileSystem match without importing Beam: a pattern without wildcards names one
    file; otherwise every file under the folder before the first wildcard (recursively), kept where
    the whole path matches, `*` within one path segment, `**` across segments (FileSystem.match)."""
    if pattern.endswith("/"):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        return {pattern: os.path.getsize(pattern)} if os.path.isfile(pattern) else {}
    regex, found = re.compile(_translate(pattern)), {}
    for folder, _, names in os.walk(os.path.dirname(prefix)):  # '' (a bare "*.x") lists nothing, as in Beam
        for name in names:
            path = os.path.join(folder, name)
            if regex.match(path):
                try:
                    found[path] = os.path.getsize(path)
                except OSError:  # gone while listing
                    pass
    return found


def _translate(pattern: str) -> str:
    """Beam's FileSystem.translate_pattern, unchanged: fnmatch, `*` within a segment, `**` across."""
    i, n, out = 0, len(pattern), ""
    while i < n:
        c, i = pattern[i], i + 1
        if c == "*":
            if i < n and pattern[i] == "*":
                out, i = out + ".*", i + 1
            else:
                out += r"[^/\\]*"
        elif c == "?":
            out += "."
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out += r"\["
            else:
                stuff, i = pattern[i:j].replace("\\", "\\\\"), j + 1
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                out += f"[{stuff}]"
        else:
            out += re.escape(c)
    return r"(?ms)" + out + r"\Z"

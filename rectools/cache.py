"""On-disk cache of parsed arrays, one entry per source file, for any reader.

A reader supplies `build(path)`: a generator that parses the source file into chunks (dicts
name -> numpy array, all of one length along the first axis, the same names and trailing shapes
in every chunk) and returns a JSON-able summary (e.g. counts the reader logs). The first pass
writes the chunks to disk as they go by (memory stays at one chunk); later passes read them back
instead of the text.

An entry is the folder <cache_dir>/<file name>.<hash of path and schema>/ holding one raw file per
array (<name>.bin, C order) and manifest.json: the source's absolute path, size and mtime_ns, the
reader's schema (fields, max_len, vocabulary size, parser version...: whatever changes the arrays),
the arrays' dtypes and shapes, and the summary. An entry is read only when all of it matches and
every file has its full size: a stale entry (the file was touched, the schema changed) is rebuilt,
and a half-written one never exists under its name (it is written in a hidden temporary folder
and renamed, rectools.atomic). A cache folder that cannot be written leaves the
reader parsing text, with one log line.
"""
import hashlib
import json
import logging
import os
import shutil

import numpy as np

from .atomic import PendingFolder
from .errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_VERSION = 1


def cache_dir(config):
    """The cache folder runner.cache_dir names (absolute), or None when caching is off ('' or 'none').
    Unset: $XDG_CACHE_HOME/escm2-paddle, else ~/.cache/escm2-paddle. A relative path was resolved
    by rectools.config like any path key's."""
    value = config.get("runner.cache_dir")
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        return os.path.abspath(os.path.expanduser(os.path.join(base, "escm2-paddle")))
    return value or None


def _identity(path):
    st = os.stat(path)
    return {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _canonical(value):
    return json.loads(json.dumps(value, sort_keys=True))


class ArrayCache:
    """Entries of one reader's schema under `folder` (None: caching off, every pass parses).

    `schema`: JSON-able dict of everything besides the source's bytes that decides the arrays.
    Each source is logged once per ArrayCache as built, read, or not cacheable.
    """

    def __init__(self, folder, schema):
        self.folder = folder
        self.schema = _canonical(schema)
        self.logged = set()
        self.unwritable = False

    def entry(self, source):
        """The folder of the entry of `source` under this schema."""
        key = json.dumps({"source": os.path.abspath(source), "schema": self.schema}, sort_keys=True)
        name = f"{os.path.basename(source)}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        return os.path.join(self.folder, name)

    def manifest(self, source):
        """The manifest of a complete, current entry of `source`, or None."""
        if self.folder is None:
            return None
        entry = self.entry(source)
        try:
            with open(os.path.join(entry, MANIFEST)) as f:
                manifest = json.load(f)
            if (manifest.get("version") != CACHE_VERSION or manifest.get("schema") != self.schema
                    or {k: manifest.get(k) for k in ("source", "size", "mtime_ns")} != _identity(source)):
                return None
            for name, spec in manifest["arrays"].items():
                size = manifest["rows"] * int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                if os.path.getsize(os.path.join(entry, name + ".bin")) != size:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return manifest

    def _say(self, source, message, *args):
        if source not in self.logged:
            self.logged.add(source)
            log.info(message, *args)

    def chunks(self, source, build, rows):
        """Generator of the chunks of `source` (read from its entry, else from build(source) while
        the entry is written) with at most `rows` rows each from the cache; returns the summary.
        Errors of build() propagate unchanged and leave no entry."""
        manifest = self.manifest(source)
        if manifest is not None:
            self._say(source, "%s: read from cache %s", source, self.entry(source))
            yield from self._read(source, manifest, rows)
            return manifest["summary"]
        return (yield from self._build(source, build))

    def _read(self, source, manifest, rows):
        """The entry's arrays, `rows` rows at a time, by plain reads: memory (RSS) stays at one
        chunk however large the file, where a memory map would keep every page it touched."""
        entry, total = self.entry(source), manifest["rows"]
        specs = {name: (np.dtype(spec["dtype"]), tuple(spec["shape"])) for name, spec in manifest["arrays"].items()}
        files = {name: open(os.path.join(entry, name + ".bin"), "rb") for name in specs}
        try:
            for start in range(0, total, rows):
                n = min(rows, total - start)
                chunk = {}
                for name, (dtype, shape) in specs.items():
                    count = n * int(np.prod(shape))
                    values = np.fromfile(files[name], dtype=dtype, count=count)
                    if values.size != count:
                        raise DataError(files[name].name, 0, "cache file ended early (changed while read?); "
                                                             "delete the folder and run again")
                    chunk[name] = values.reshape((n, *shape))
                yield chunk
        finally:
            for f in files.values():
                f.close()

    def _build(self, source, build):
        identity = _identity(source)
        writer = self._writer(source)
        parts = build(source)
        try:
            while True:
                try:
                    chunk = next(parts)
                except StopIteration as stop:
                    summary = stop.value
                    break
                if writer is not None and not writer.add(chunk):
                    writer = None
                yield chunk
        except BaseException:
            if writer is not None:
                writer.discard()
            parts.close()  # stops the parse (and its workers) now, not when collected
            raise
        if writer is None:
            return summary
        if _identity(source) != identity:
            writer.discard()
            self._say(source, "%s: changed while it was read; not cached", source)
            return summary
        if writer.commit({"version": CACHE_VERSION, **identity, "schema": self.schema, "summary": summary}):
            self._say(source, "%s: parsed, cache written to %s", source, self.entry(source))
            self._prune()
        return summary

    def _writer(self, source):
        if self.folder is None:
            return None
        if self.unwritable:
            return None
        try:
            return _EntryWriter(self.entry(source))
        except OSError as e:
            self.unwritable = True
            log.warning("cache folder %s cannot be written (%s): parsing text on every pass", self.folder, e)
            return None

    def _prune(self):
        """Drop entries whose source file is gone (temporary data, moved files)."""
        try:  # an entry's name starts with its source's (a dot too); atomic_folder's temporaries end .new/.old
            names = [n for n in os.listdir(self.folder) if not n.endswith((".new", ".old"))]
        except OSError:
            return
        for name in names:
            try:
                with open(os.path.join(self.folder, name, MANIFEST)) as f:
                    source = json.load(f)["source"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not os.path.exists(source):
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)


class _EntryWriter:
    """Appends chunks to <name>.bin files in a PendingFolder; commit() writes the manifest and
    renames the folder into place, discard() removes it. A write error (disk full...) is logged
    once and the entry abandoned; reading goes on."""

    def __init__(self, final):
        self.final = final
        self.pending = PendingFolder(final)
        self.tmp = self.pending.path
        self.files, self.specs, self.rows, self.open = {}, None, 0, True

    def add(self, chunk):
        specs = {name: {"dtype": a.dtype.str, "shape": list(a.shape[1:])} for name, a in chunk.items()}
        if self.specs is None:
            self.specs = specs
        elif specs != self.specs:
            raise ValueError(f"chunks of one file differ in names, dtypes or shapes: {specs} vs {self.specs}")
        try:
            for name, array in chunk.items():
                if name not in self.files:
                    self.files[name] = open(os.path.join(self.tmp, name + ".bin"), "wb")
                np.ascontiguousarray(array).tofile(self.files[name])
        except OSError as e:
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            self.discard()
            return False
        self.rows += len(next(iter(chunk.values())))
        return True

    def _close(self):
        for f in self.files.values():
            f.close()
        self.files = {}

    def commit(self, manifest):
        try:
            self._close()
            with open(os.path.join(self.tmp, MANIFEST), "w") as f:
                json.dump({**manifest, "rows": self.rows, "arrays": self.specs or {}}, f, indent=1)
        except OSError as e:
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            self.discard()
            return False
        self.open = False
        try:
            self.pending.commit()
        except OSError as e:
            self.pending.discard()
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            return False
        return True

    def discard(self):
        if not self.open:
            return
        self.open = False
        try:
            self._close()
        except OSError:
            pass
        self.pending.discard()

"""On-disk cache of parsed arrays, one entry per source file, for any reader.

A reader supplies `build(path)`: a generator that parses the source file into chunks (dicts
name -> numpy array, all of one length along the first axis, the same names and trailing shapes
in every chunk) and returns a JSON-able summary (e.g. counts the reader logs). The first pass
writes the chunks to disk as they go by (memory stays at one chunk); later passes read them back
instead of the text.

An entry is the folder <cache_dir>/<file name>.<hash of path and schema>/ holding one raw file per
array (<name>.bin, C order) and manifest.json: the source's absolute path, size and mtime_ns, the
reader's schema (fields, max_len, vocabulary size, parser version...: whatever changes the arrays),
the arrays' dtypes and shapes, a CRC-32 of every CHECK_ROWS rows of each array, and the summary.

An entry is read only when all of it matches the source (size, mtime_ns, ctime_ns, which every
write changes, even one that restores the mtime with `touch -r`, and a fingerprint of sampled
blocks of its bytes) and every file has its full size: a stale entry is rebuilt. The checksums are
checked as the rows are read, before any row of a block is handed on: a damaged entry is removed
with one warning and the rest of the source comes from its text (the rows already handed on were
whole). A half-written entry never exists under its name (it is written in a hidden temporary
folder, locked while its writer lives, and renamed, rectools.atomic.PendingFolder); the
temporaries of writers that were killed are removed by the next cache of the folder. A cache
folder that cannot be written leaves the reader parsing text, with one log line. A source that
disappears while a run reads it is a UserError naming it.
"""
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zlib

import numpy as np

from . import leftovers
from .atomic import _HOST_TAG, _TEMP, PendingFolder, _alive, _size
from .errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_ENTRY = re.compile(r".+\.[0-9a-f]{16}")  # ArrayCache.entry's names: the source's name and a key's hash
CACHE_VERSION = 2
CHECK_ROWS = 8192  # rows of an array under one CRC-32: a damaged block is found before any of its rows is used
SAMPLES, SAMPLE_BYTES = 16, 4096  # the source's fingerprint: this many blocks of this many bytes


def cache_dir(config):
    """The cache folder runner.cache_dir names (absolute), or None when caching is off ('' or 'none').
    Unset: $XDG_CACHE_HOME/escm2-paddle, else ~/.cache/escm2-paddle. A relative path was resolved
    by rectools.config like any path key's."""
    value = config.get("runner.cache_dir")
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        return os.path.abspath(os.path.expanduser(os.path.join(base, "escm2-paddle")))
    return value or None


def fingerprint(path):
    """A cheap content fingerprint of the file at `path` (hex str, 32 digits): the sha256 of its size
    and of SAMPLES blocks of SAMPLE_BYTES bytes at evenly spaced offsets, the first and the last
    included (the whole file when it is smaller). An edit inside a sampled block changes it; files
    of the same size differing elsewhere share it. Reads ~64 KB whatever the size.
    Raises OSError (FileNotFoundError...) when the file cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        if size <= SAMPLES * SAMPLE_BYTES:
            digest.update(f.read())
        else:
            for k in range(SAMPLES):
                f.seek((size - SAMPLE_BYTES) * k // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def max_bytes(config):
    """The bytes runner.cache_max_gb lets a cache folder's entries take (GB of 10^9 bytes)."""
    return int(config["runner.cache_max_gb"] * 1e9)


def _identity(path):
    """What an entry records of its source. Raises FileNotFoundError when the source is gone."""
    st = os.stat(path)
    return {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "fingerprint": fingerprint(path)}


IDENTITY = ("source", "size", "mtime_ns", "ctime_ns", "fingerprint")


def disappeared(source):
    """The error of a source that was removed or moved while a run used it."""
    return UserError(f"{source}: data file not found: it was removed or moved while this run was reading it")


class Damaged(Exception):
    """A cache entry whose bytes differ from what its manifest records."""


def _block_crcs(array, crcs=None, partial=None):
    """CRC-32s of `array` [n, ...] (C-contiguous) cut into blocks of CHECK_ROWS rows, appended to
    `crcs` (a list); `partial` = (crc, rows) of an unfinished block before these rows. Returns the
    (crc, rows) of the unfinished block after them."""
    crcs = [] if crcs is None else crcs
    crc, filled = partial or (0, 0)
    raw = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    row_bytes = len(raw) // len(array) if len(array) else 0
    start = 0
    while start < len(array):
        take = min(CHECK_ROWS - filled, len(array) - start)
        crc = zlib.crc32(raw[start * row_bytes:(start + take) * row_bytes], crc)
        start, filled = start + take, filled + take
        if filled == CHECK_ROWS:
            crcs.append(crc)
            crc, filled = 0, 0
    return crc, filled


def _canonical(value):
    return json.loads(json.dumps(value, sort_keys=True))


class ArrayCache:
    """Entries of one reader's schema under `folder` (None: caching off, every pass parses).

    `schema`: JSON-able dict of everything besides the source's bytes that decides the arrays.
    `narrow`: {array name: integer dtype} arrays are stored as on disk (their values must fit: the
    reader's checks guarantee it, e.g. ids below the vocabulary size; see narrowest), read back as
    the dtype the reader gave. `limit`: bytes the folder's entries may take (None: no limit): after
    an entry is written, the least recently used others are removed until they fit, and an entry
    that alone exceeds it is not written.
    Each source is logged once per ArrayCache as built, read, or not cacheable.
    """

    def __init__(self, folder, schema, narrow=None, limit=None):
        self.folder = folder
        self.schema = _canonical(schema)
        self.narrow = {name: np.dtype(dtype) for name, dtype in (narrow or {}).items()}
        self.limit = limit
        self.logged = set()
        self.unwritable = False
        self.tidied = False

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
                    or {k: manifest.get(k) for k in IDENTITY} != _identity(source)):
                return None
            for name, spec in manifest["arrays"].items():
                size = manifest["rows"] * int(np.prod(spec["shape"])) * np.dtype(spec["stored"]).itemsize
                if (os.path.getsize(os.path.join(entry, name + ".bin")) != size
                        or len(spec["crc32"]) != -(-manifest["rows"] // CHECK_ROWS)):
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return manifest

    def rows(self, sources):
        """The rows of `sources` together when each has a complete, current entry (whose pass then
        reads the cache), else None: from their manifests, without reading the data."""
        total = 0
        for source in sources:
            manifest = self.manifest(source)
            if manifest is None:
                return None
            total += manifest["rows"]
        return total

    def _say(self, source, message, *args):
        if source not in self.logged:
            self.logged.add(source)
            log.info(message, *args)

    def chunks(self, source, build, rows):
        """Generator of the chunks of `source` (read from its entry, else from build(source) while
        the entry is written) with at most `rows` rows each from the cache; returns the summary.
        Errors of build() propagate unchanged and leave no entry. A damaged entry (see the module)
        is removed with one warning and the rows not yet handed on come from build(source).
        Raises UserError (disappeared) when the source is gone."""
        self._tidy()
        if not os.path.exists(source):
            raise disappeared(source)
        manifest = self.manifest(source)
        if manifest is not None:
            self._say(source, "%s: read from cache %s", source, self.entry(source))
            done = 0
            try:
                for chunk in self._read(source, manifest, rows):
                    yield chunk
                    done += len(next(iter(chunk.values())))
                return manifest["summary"]
            except Damaged as e:
                log.warning("%s: cache entry %s is damaged (%s): removed; reading the text again", source,
                            self.entry(source), e)
                shutil.rmtree(self.entry(source), ignore_errors=True)
                self.logged.add(source)  # one line for the file: the rebuild's own is not needed
                return (yield from _skip(self._build(source, build), done))
        return (yield from self._build(source, build))

    def _read(self, source, manifest, rows):
        """The entry's arrays, `rows` rows at a time, by plain reads: memory (RSS) stays at one
        block of CHECK_ROWS rows however large the file, where a memory map would keep every page
        it touched. Each block is checked against its CRC-32 before any of its rows is yielded;
        raises Damaged at the first that differs (or a file that ends early)."""
        entry, total = self.entry(source), manifest["rows"]
        specs = {name: (np.dtype(spec["dtype"]), np.dtype(spec["stored"]), tuple(spec["shape"]), spec["crc32"])
                 for name, spec in manifest["arrays"].items()}
        try:
            os.utime(os.path.join(entry, MANIFEST))  # its mtime is the entry's last use (least recently used goes first)
        except OSError:
            pass
        try:
            files = {name: open(os.path.join(entry, name + ".bin"), "rb") for name in specs}
        except FileNotFoundError as e:  # removed since the manifest was read (a tools/cache.py clear)
            raise Damaged(f"{e.filename} is gone") from None
        try:
            for block, start in enumerate(range(0, total, CHECK_ROWS)):
                n = min(CHECK_ROWS, total - start)
                arrays = {}
                for name, (dtype, stored, shape, crcs) in specs.items():
                    count = n * int(np.prod(shape))
                    values = np.fromfile(files[name], dtype=stored, count=count)
                    if values.size != count:
                        raise Damaged(f"{name}.bin ended early")
                    if zlib.crc32(values) != crcs[block]:
                        raise Damaged(f"{name}.bin rows {start}-{start + n - 1} differ from their checksum")
                    arrays[name] = values.astype(dtype, copy=False).reshape((n, *shape))
                for at in range(0, n, rows):
                    yield {name: values[at:at + rows] for name, values in arrays.items()}
        finally:
            for f in files.values():
                f.close()

    def _build(self, source, build):
        try:
            identity = _identity(source)
        except FileNotFoundError:
            raise disappeared(source) from None
        writer = self._writer(source)
        parts = build(source)
        try:
            while True:
                try:
                    chunk = next(parts)
                except StopIteration as stop:
                    summary = stop.value
                    break
                except FileNotFoundError:  # from this process or a parse worker
                    if os.path.exists(source):
                        raise
                    raise disappeared(source) from None
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
        try:
            now = _identity(source)
        except FileNotFoundError:  # gone after it was read whole: nothing to cache it for
            now = None
        if now != identity:
            writer.discard()
            self._say(source, "%s: changed while it was read; not cached", source)
            return summary
        if writer.commit({"version": CACHE_VERSION, **identity, "schema": self.schema, "summary": summary}):
            self._say(source, "%s: parsed, cache written to %s", source, self.entry(source))
            self._prune()
            self._evict(keep=self.entry(source))
        return summary

    def _writer(self, source):
        if self.folder is None:
            return None
        if self.unwritable:
            return None
        try:
            return _EntryWriter(self.entry(source), self.narrow, self.limit)
        except OSError as e:
            self.unwritable = True
            log.warning("cache folder %s cannot be written (%s): parsing text on every pass", self.folder, e)
            return None

    def _tidy(self):
        """Once per ArrayCache: remove what killed writers left and the entries of sources that are
        gone (see _prune)."""
        if self.folder is None or self.tidied:
            return
        self.tidied = True
        left = [item for item in temporaries(self.folder) if item["left"]]
        for item in left:
            shutil.rmtree(item["path"], ignore_errors=True)
        if left:
            log.info("cache %s: removed %d temporary entr%s of stopped runs (%.1f MB)", self.folder, len(left),
                     "y" if len(left) == 1 else "ies", sum(item["bytes"] for item in left) / 1e6)
        self._prune()

    def _prune(self):
        """Drop entries whose source file is gone (temporary data, moved files)."""
        for item in entries(self.folder):
            if item["source"] is not None and not os.path.exists(item["source"]):
                shutil.rmtree(item["path"], ignore_errors=True)

    def _evict(self, keep):
        """Remove the least recently used entries but `keep` until the entries fit self.limit."""
        if self.limit is None:
            return
        items = sorted((item for item in entries(self.folder) if item["path"] != keep), key=lambda i: i["last_used"])
        total = sum(item["bytes"] for item in items) + _size(keep)
        for item in items:
            if total <= self.limit:
                break
            shutil.rmtree(item["path"], ignore_errors=True)
            total -= item["bytes"]
            log.info("cache %s: removed the entry of %s (%.1f MB, last used %s), the least recently used, to stay "
                     "within runner.cache_max_gb=%g", self.folder, item["source"], item["bytes"] / 1e6,
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(item["last_used"])), self.limit / 1e9)


def entries(folder):
    """The entries in cache folder `folder` (temporaries excluded), as dicts: path, source (the
    absolute path it was parsed from; None when its manifest is unreadable), bytes, last_used
    (Unix seconds: when it was last read or written). An entry is a folder named as ArrayCache.entry
    names them that holds a manifest: anything else in the folder is not the cache's, and neither
    listed nor ever removed. An unreadable folder has none."""
    try:  # an entry's name starts with its source's (a dot too); atomic_folder's temporaries end .new/.old
        names = sorted(n for n in os.listdir(folder) if _TEMP.fullmatch(n) is None)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        if not (_ENTRY.fullmatch(name) and os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))):
            continue
        try:
            with open(os.path.join(path, MANIFEST)) as f:
                source = json.load(f)["source"]
            last_used = os.stat(os.path.join(path, MANIFEST)).st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            source, last_used = None, 0.0
        try:
            found.append({"path": path, "source": source, "bytes": _size(path), "last_used": last_used})
        except OSError:  # removed meanwhile
            continue
    return found


def temporaries(folder):
    """The temporaries in cache folder `folder` (entries being written, or left by stopped
    writers), as dicts: path, bytes, left (True: its writer stopped, see _left_behind)."""
    try:
        names = sorted(n for n in os.listdir(folder) if _TEMP.fullmatch(n) is not None)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            found.append({"path": path, "bytes": _size(path), "left": _left_behind(path, name)})
        except OSError:
            continue
    return found


def clear(folder):
    """Remove every entry of cache folder `folder` and the temporaries of stopped writers; entries
    being written by running processes stay. Returns (items removed, bytes removed, items kept)."""
    removed, size = 0, 0
    for item in entries(folder) + [t for t in temporaries(folder) if t["left"]]:
        shutil.rmtree(item["path"], ignore_errors=True)
        removed, size = removed + 1, size + item["bytes"]
    return removed, size, len(temporaries(folder))


def narrowest(largest):
    """The narrowest signed integer dtype (int8, int16, int32 or int64) holding 0..`largest`."""
    for dtype in (np.int8, np.int16, np.int32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _skip(chunks, rows):
    """The chunks of the generator `chunks` from row `rows` on (the rows before were handed on
    already); returns its return value."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration as stop:
            return stop.value
        n = len(next(iter(chunk.values())))
        if rows >= n:
            rows -= n
            continue
        yield {name: values[rows:] for name, values in chunk.items()} if rows else chunk
        rows = 0


def _left_behind(path, name):
    """Whether the cache folder's item `path` (named `name`) is a temporary of a writer that
    stopped: a `.new` whose lock (rectools.leftovers) is free (at once when its writer, named in
    it by rectools.atomic's naming, ran on this host and no longer runs; else once the lock is
    a minute old), or, without a lock, whose writer no longer runs on this host; a `.old` (an entry
    moved aside while it was replaced) of such a writer."""
    match = _TEMP.fullmatch(name)
    if match is None or not os.path.isdir(path):
        return False
    gone = match["host"] == _HOST_TAG and not _alive(int(match["pid"]))
    if match["kind"] == "new" and os.path.exists(os.path.join(path, leftovers.LOCK)):
        return leftovers.abandoned(path, settle=0 if gone else leftovers.SETTLE_SECONDS)
    return gone


class _EntryWriter:
    """Appends chunks to <name>.bin files in a PendingFolder; commit() writes the manifest and puts
    the folder in place, discard() removes it. A write
    error (disk full...) is logged once and the entry abandoned; reading goes on."""

    def __init__(self, final, narrow, limit):
        self.final, self.narrow, self.limit, self.bytes = final, narrow, limit, 0
        self.pending = PendingFolder(final)
        self.tmp = self.pending.path
        self.files, self.specs, self.rows, self.open = {}, None, 0, True
        self.crcs, self.partial = {}, {}
        try:
            self.lock = leftovers.hold(self.tmp)  # tells a later run whether this writer still lives
        except BaseException:
            self.pending.discard()
            raise

    def add(self, chunk):
        specs = {name: {"dtype": a.dtype.str, "stored": self.narrow.get(name, a.dtype).str, "shape": list(a.shape[1:])}
                 for name, a in chunk.items()}
        if self.specs is None:
            self.specs = specs
        elif specs != self.specs:
            raise ValueError(f"chunks of one file differ in names, dtypes or shapes: {specs} vs {self.specs}")
        try:
            for name, array in chunk.items():
                if name not in self.files:
                    self.files[name] = open(os.path.join(self.tmp, name + ".bin"), "wb")
                array = _stored(np.ascontiguousarray(array), self.narrow.get(name), name)
                array.tofile(self.files[name])
                self.bytes += array.nbytes
                self.partial[name] = _block_crcs(array, self.crcs.setdefault(name, []), self.partial.get(name))
        except OSError as e:
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            self.discard()
            return False
        self.rows += len(next(iter(chunk.values())))
        if self.limit is not None and self.bytes > self.limit:
            log.info("%s: not cached: its entry would take more than runner.cache_max_gb=%g", self.final,
                     self.limit / 1e9)
            self.discard()
            return False
        return True

    def _close(self):
        for f in self.files.values():
            f.close()
        self.files = {}
        self.lock.close()

    def commit(self, manifest):
        try:
            os.unlink(os.path.join(self.tmp, leftovers.LOCK))  # not part of the entry; unlinked while held
            self._close()
            arrays = {name: {**spec, "crc32": self.crcs[name] + ([self.partial[name][0]] if self.partial[name][1] else [])}
                      for name, spec in (self.specs or {}).items()}
            with open(os.path.join(self.tmp, MANIFEST), "w") as f:
                json.dump({**manifest, "rows": self.rows, "arrays": arrays}, f, indent=1)
        except OSError as e:
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            self.discard()
            return False
        self.open = False
        try:
            self.pending.commit()
        except OSError as e:
            log.warning("cannot write cache entry %s (%s): going on without it", self.final, e)
            self.pending.discard()
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


def _stored(array, dtype, name):
    """`array` as stored: cast to `dtype` (None: as it is). Raises ValueError (a bug of the reader,
    which promised values that fit) when a value does not fit."""
    if dtype is None or dtype == array.dtype:
        return array
    info = np.iinfo(dtype)
    if array.size and (array.max() > info.max or array.min() < info.min):
        raise ValueError(f"{name}: values {array.min()}..{array.max()} do not fit the stored dtype {dtype}")
    return array.astype(dtype)

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
folder, locked while its writer lives, and renamed, rectools.checkpoint.atomic_folder); the
temporaries of writers that were killed are removed by the next cache of the folder. A cache
folder that cannot be written leaves the reader parsing text, with one log line. A source that
disappears while a run reads it is a UserError naming it.
"""
import hashlib
import json
import logging
import os
import shutil
import zlib

import numpy as np

from . import leftovers
from .checkpoint import _HOST_TAG, _TEMP, _alive, _size, atomic_folder
from .errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
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
    Each source is logged once per ArrayCache as built, read, or not cacheable.
    """

    def __init__(self, folder, schema):
        self.folder = folder
        self.schema = _canonical(schema)
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
                size = manifest["rows"] * int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                if (os.path.getsize(os.path.join(entry, name + ".bin")) != size
                        or len(spec["crc32"]) != -(-manifest["rows"] // CHECK_ROWS)):
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
        specs = {name: (np.dtype(spec["dtype"]), tuple(spec["shape"]), spec["crc32"])
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
                for name, (dtype, shape, crcs) in specs.items():
                    count = n * int(np.prod(shape))
                    values = np.fromfile(files[name], dtype=dtype, count=count)
                    if values.size != count:
                        raise Damaged(f"{name}.bin ended early")
                    if zlib.crc32(values) != crcs[block]:
                        raise Damaged(f"{name}.bin rows {start}-{start + n - 1} differ from their checksum")
                    arrays[name] = values.reshape((n, *shape))
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

    def _tidy(self):
        """Once per ArrayCache: remove what killed writers left and the entries of sources that are
        gone (see _prune)."""
        if self.folder is None or self.tidied:
            return
        self.tidied = True
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        left, size = 0, 0
        for name in names:
            path = os.path.join(self.folder, name)
            if _left_behind(path, name):
                size += _size(path)
                shutil.rmtree(path, ignore_errors=True)
                left += 1
        if left:
            log.info("cache %s: removed %d temporary entr%s of stopped runs (%.1f MB)", self.folder, left,
                     "y" if left == 1 else "ies", size / 1e6)
        self._prune()

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
    it by rectools.checkpoint's naming, ran on this host and no longer runs; else once the lock is
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
    """Appends chunks to <name>.bin files in atomic_folder's temporary folder; commit() writes the
    manifest and lets atomic_folder rename the folder into place, discard() removes it. A write
    error (disk full...) is logged once and the entry abandoned; reading goes on."""

    def __init__(self, final):
        self.final = final
        self.context = atomic_folder(final)
        self.tmp = self.context.__enter__()
        self.files, self.specs, self.rows, self.open = {}, None, 0, True
        self.crcs, self.partial = {}, {}
        try:
            self.lock = leftovers.hold(self.tmp)  # tells a later run whether this writer still lives
        except BaseException:
            self.context.__exit__(_Discarded, _Discarded(), None)
            raise

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
                array = np.ascontiguousarray(array)
                array.tofile(self.files[name])
                self.partial[name] = _block_crcs(array, self.crcs.setdefault(name, []), self.partial.get(name))
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
            self.context.__exit__(None, None, None)  # the rename; on failure atomic_folder cleans up
        except OSError as e:
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
        self.context.__exit__(_Discarded, _Discarded(), None)  # atomic_folder removes the folder


class _Discarded(Exception):
    pass

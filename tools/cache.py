"""List or clear the parse cache (runner.cache_dir): the arrays parsed from each data file.

  python tools/cache.py list  [-m CONFIG [-o key=value ...] | --dir DIR]   entries: last use, size, source
  python tools/cache.py clear [-m CONFIG [-o key=value ...] | --dir DIR]   remove them all

Without -m or --dir: the default folder ($XDG_CACHE_HOME/escm2-paddle or ~/.cache/escm2-paddle)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cache, cli  # noqa: E402


def folder_of(args):
    """(the cache folder the arguments name or None when caching is off, its limit in bytes or None)."""
    if args.dir is not None:
        return os.path.abspath(args.dir), None
    if args.config_yaml is None:
        return cache.cache_dir({}), None
    from rectools.model_loader import load
    config = load(args.config_yaml, args.opt)[0]
    return cache.cache_dir(config), cache.max_bytes(config)


def listing(folder, limit):
    """The lines of `list`: a summary, then one line per entry (least recently used first) and
    per temporary."""
    items = sorted(cache.entries(folder), key=lambda item: item["last_used"])
    temporaries = cache.temporaries(folder)
    total = sum(item["bytes"] for item in items + temporaries)
    within = f" of runner.cache_max_gb={limit / 1e9:g} GB" if limit is not None else ""
    lines = [f"cache {folder}: {len(items)} entr{'y' if len(items) == 1 else 'ies'}, {total / 1e6:.1f} MB{within}"]
    for item in items:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(item["last_used"])) if item["last_used"] else "unknown"
        source = item["source"] or f"{item['path']} (unreadable manifest)"
        gone = "" if item["source"] is None or os.path.exists(item["source"]) else " (source gone)"
        lines.append(f"  {used}  {item['bytes'] / 1e6:10.1f} MB  {source}{gone}")
    for item in temporaries:
        state = "left by a stopped run" if item["left"] else "being written by a running process"
        lines.append(f"  {'temporary':16}  {item['bytes'] / 1e6:10.1f} MB  {item['path']} ({state})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["list", "clear"])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-m", "--config_yaml", help="a model config: its runner.cache_dir")
    where.add_argument("--dir", help="the cache folder itself")
    parser.add_argument("-o", "--opt", nargs="*", default=[], action="extend", help="overrides of the config, key=value")
    args = parser.parse_args(argv)

    def act():
        folder, limit = folder_of(args)
        if folder is None:
            print("caching is off (runner.cache_dir is none): nothing to list or clear")
            return
        if args.action == "list":
            print("\n".join(listing(folder, limit)))
            return
        removed, size, kept = cache.clear(folder)
        busy = f"; {kept} entr{'y' if kept == 1 else 'ies'} being written by running processes kept" if kept else ""
        print(f"cache {folder}: removed {removed} item(s), {size / 1e6:.1f} MB{busy}")
    cli.one_line_errors(act)


if __name__ == "__main__":
    main()

"""Sizes that cannot fit in this machine's memory, refused when the config is read: one line naming
the key and the bytes it would take, instead of an allocator error once the work has begun.
A model folder says what its keys need (a lower bound); this module knows the machine."""
import os

from .errors import ConfigError


def available_memory(meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup/memory.max"):
    """Bytes of memory this process can still take: the kernel's MemAvailable, or the container's
    limit (cgroup v2 memory.max) when lower; elsewhere the machine's physical memory; None when
    none of them can be read."""
    found = []
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(cgroup) as f:
            text = f.read().strip()
        if text.isdigit():
            found.append(int(text))
    except OSError:
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def check_memory(config, needs, available=None):
    """Refuse the first of `needs` beyond the memory available (available_memory() unless given):
    `needs` lists (key, bytes, how: the sum behind the bytes, for the message). Raises ConfigError
    naming the config file, the key and both sizes; nothing when the memory cannot be learnt."""
    available = available_memory() if available is None else available
    if available is None:
        return
    for key, size, how in needs:
        if size > available:
            raise ConfigError(f"{config.path}: {key}: {gigabytes(size)} of memory needed ({how}), more than the "
                              f"{gigabytes(available)} available")


def check_model(config, package):
    """check_memory of what the model folder's memory.needs(config) lists, when it has that module
    (the command lines call this once the config is read). Raises ConfigError."""
    from .model_loader import has_module, model_module
    if has_module(package, "memory"):
        check_memory(config, model_module(package, "memory", "runner.model_dir").needs(config))


def gigabytes(size):
    """`size` bytes as a short text in GB (10^9 bytes)."""
    return f"{size / 1e9:.3g} GB" if size < 1e12 else f"{size / 1e9:,.0f} GB"

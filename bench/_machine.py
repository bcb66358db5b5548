"Shared by the bench scripts: a one-line description of this machine, and adding rows to a BENCHMARKS.md table."
import fcntl, os, platform, re


def machine() -> str:
    "`uname -m`, `nproc` and the CPU model from /proc/cpuinfo."
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): model = line.split(":", 1)[1].strip(); break
    except OSError: pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {model}"


def _level(line: str) -> int:
    "A markdown heading's level (`### x`: 3), 0 for another line."
    m = re.match(r"(#{1,6}) ", line)
    return len(m.group(1)) if m else 0

def append_rows(path: str, heading: str, intro: str, header: str, rows: list):
    """Add `rows` (markdown table lines) to the table under `heading` in `path`, keeping the other sections; the
    file, the section (heading, `intro`, `header`) and the table are created as needed. Holds a file lock, so
    benches running at the same time can append to the same file."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0); lines = (f.read() or "# Benchmarks\n").rstrip("\n").split("\n")
        if heading not in lines:
            lines += ["", heading, "", *intro.rstrip("\n").split("\n"), "", *header.split("\n"), *rows]
        else:
            start, level = lines.index(heading), _level(heading)
            end = next((i for i in range(start + 1, len(lines)) if 0 < _level(lines[i]) <= level), len(lines))   # the next heading as high
            last_row = max((i for i in range(start, end) if lines[i].startswith("|")), default=None)
            if last_row is not None: lines[last_row + 1:last_row + 1] = rows
            else:   # a new table after the section's text, blank lines around it
                at = end
                while at > start + 1 and not lines[at - 1].strip(): at -= 1
                lines[at:at] = ["", *header.split("\n"), *rows]
        f.seek(0); f.truncate(); f.write("\n".join(lines) + "\n")

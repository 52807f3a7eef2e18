"""gdb script: counts draws from burn's process-wide generator made outside
ldmscale_model::init::with_device_rng, by the call sites in our crates.

Such a draw, in a process where another thread makes seeded draws, changes what that thread
gets (see crates/model/src/init.rs). Run through unlocked-draws.sh."""
import gdb

sites = {}


def our_lines(frame):
    lines = []
    while frame is not None:
        sal = frame.find_sal()
        path = sal.symtab.fullname() if sal.symtab else ""
        if "/crates/" in path and "/registry/" not in path:
            lines.append("crates/%s:%d" % (path.split("/crates/")[-1], sal.line))
        frame = frame.older()
    return lines


class Draw(gdb.Breakpoint):
    def stop(self):
        newest = gdb.newest_frame()
        sal = newest.find_sal()
        if not (sal.symtab and "burn-flex" in sal.symtab.fullname()):
            return False
        frame, names = newest, []
        while frame is not None:
            names.append(frame.name() or "")
            frame = frame.older()
        if not any("with_device_rng" in n for n in names):
            key = " <- ".join(our_lines(newest)[:6]) or "(no frame of ours)"
            sites[key] = sites.get(key, 0) + 1
        return False


def report(_event):
    for key, count in sorted(sites.items(), key=lambda kv: -kv[1]):
        print("UNLOCKED %d %s" % (count, key))
    print("unlocked draw sites: %d" % len(sites))


Draw("float_random")
Draw("int_random")
gdb.events.exited.connect(report)

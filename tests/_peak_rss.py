"""Peak memory of a child process, measured right.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` survives ``exec`` on Linux: a child
started by a pytest process that holds 1.7 GB reports 1.7 GB whatever it does (CI
found this: every memory bound failed in the full run, none alone). ``VmHWM`` in
``/proc/self/status`` belongs to the process image, so it starts afresh at exec.
"""

#: Paste at the top of a child's code; ``_hwm()`` then gives its peak RSS in bytes.
HWM = (
    "def _hwm():\n"
    "    with open('/proc/self/status') as fh:\n"
    "        for line in fh:\n"
    "            if line.startswith('VmHWM:'):\n"
    "                return int(line.split()[1]) * 1024\n"
    "    raise RuntimeError('no VmHWM in /proc/self/status')\n"
)

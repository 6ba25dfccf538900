#!/usr/bin/env python3
"""Counts the code every delivery runs, from two callgrind profiles.

Each profile comes from `valgrind --tool=callgrind --dump-instr=yes` on
`receiver --profile-http NAME COUNT`. An instruction run at least MIN
times (a little under COUNT) runs at every delivery; those instructions are
grouped by 64-byte line. The script prints the lines of each profile and,
by function, how many more lines the first runs than the second.

    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=cg.layer \\
        target/release/deps/receiver-HASH --profile-http layer 2000
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=cg.careful \\
        target/release/deps/receiver-HASH --profile-http careful 2000
    benches/tools/code-lines.py cg.layer cg.careful 1900 40
"""

import collections
import re
import sys


def parse(path):
    """Self cost by instruction address, and each address's function."""
    costs = collections.Counter()
    function_of = {}
    names = {}
    function = None
    after_call = False
    last = []
    positions = ["instr"]
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("positions:"):
            positions = line.split()[1:]
            last = [0] * len(positions)
            continue
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            values = []
            for i, position in enumerate(parts[: len(positions)]):
                if position == "*":
                    value = last[i]
                elif position[0] in "+-":
                    value = last[i] + int(position, 0)
                else:
                    value = int(position, 0)
                values.append(value)
                last[i] = value
            if after_call:
                # The line after `calls=` is the call's inclusive cost.
                after_call = False
                continue
            cost = parts[len(positions):]
            costs[values[0]] += int(cost[0]) if cost else 0
            function_of[values[0]] = function
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        match = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if match:
            kind, number, name = match.groups()
            if name:
                names[number] = name
            if kind == "fn":
                function = names.get(number, number)
    return costs, function_of


def lines_by_function(costs, function_of, at_least):
    by_function = collections.defaultdict(set)
    for address, cost in costs.items():
        if cost >= at_least:
            by_function[function_of[address]].add(address // 64)
    return by_function


def main():
    first, second, at_least = sys.argv[1], sys.argv[2], int(sys.argv[3])
    shown = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    a = lines_by_function(*parse(first), at_least)
    b = lines_by_function(*parse(second), at_least)
    print(f"lines every delivery runs: {first} {len(set().union(*a.values()))}, "
          f"{second} {len(set().union(*b.values()))}")
    more = collections.Counter()
    for function, lines in a.items():
        extra = len(lines) - len(b.get(function, ()))
        if extra > 0:
            more[function] = extra
    for function, extra in more.most_common(shown):
        print(f"{extra:5} {function[:140]}")


if __name__ == "__main__":
    main()

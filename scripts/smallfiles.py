#!/usr/bin/env python3
"""Small-file workload for scripts/fio.sh: COUNT files of SIZE bytes spread over
DIRS directories under ROOT: create (write + close), stat, read cold, read warm,
delete; prints files/s for each phase. `drop` is run between phases that must
start cold (it drops the kernel caches; and for a Cairn mount, remounts).

usage: smallfiles.py ROOT LABEL [--count N] [--dirs D] [--size B] [--cold CMD]
"""
import argparse
import os
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("label")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--cold", default="sync; echo 3 > /proc/sys/vm/drop_caches")
    args = ap.parse_args()
    data = os.urandom(args.size)
    paths = [
        os.path.join(args.root, f"d{i % args.dirs:03}", f"f{i:06}")
        for i in range(args.count)
    ]

    def phase(name, fn):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        rate = len(paths) / (time.perf_counter() - start)
        print(f"{args.label + ' small ' + name:<28} {rate:10.0f} files/s", flush=True)

    def create(p):
        with open(p, "wb") as f:
            f.write(data)

    def read(p):
        with open(p, "rb") as f:
            if len(f.read()) != args.size:
                raise SystemExit(f"{p}: short read")

    for i in range(args.dirs):
        os.makedirs(os.path.join(args.root, f"d{i:03}"), exist_ok=True)
    phase("create", create)
    subprocess.run(args.cold, shell=True, check=False)
    phase("stat", os.stat)
    subprocess.run(args.cold, shell=True, check=False)
    phase("read cold", read)
    phase("read warm", read)
    phase("delete", os.unlink)


main()
